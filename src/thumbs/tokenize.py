"""Prompts and completions to token ids: chat templates, truncation, completion-only masks.

A prompt is plain text or a list of ``{role, content}`` messages (or that list as JSON text, as
``events.parquet`` stores it). Messages go through the tokenizer's chat template with the
generation prompt added. A completion is tokenized on its own and ends with the EOS token, so the
model learns where to stop. Loss and log-probs count completion tokens only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from thumbs.errors import ThumbsError

IGNORE = -100


def as_messages(prompt: Any) -> list[dict] | None:
    """The prompt as chat messages, or None when it is plain text."""
    if isinstance(prompt, list):
        return prompt
    if isinstance(prompt, str) and prompt.startswith("[{"):
        try:
            parsed = json.loads(prompt)
        except json.JSONDecodeError:
            return None
        if isinstance(parsed, list) and all(isinstance(m, dict) and "role" in m for m in parsed):
            return parsed
    return None


def prompt_key(prompt: Any) -> str:
    """Normalised prompt text, so prompts differing only in whitespace match (pairing, splits)."""
    messages = as_messages(prompt)
    if messages is not None:
        parts = [f"{m.get('role', '')}:{' '.join(str(m.get('content', '')).split())}" for m in messages]
        return "\x1e".join(parts)
    return " ".join(str(prompt).split())


@dataclass
class Encoder:
    """Tokenizes prompts (memoised: production logs repeat prompts) and completions."""

    tokenizer: Any
    max_length: int = 512
    max_prompt_length: int | None = None
    _prompt_cache: dict = field(default_factory=dict)
    truncated: int = 0

    def prompt_ids(self, prompt: Any) -> list[int]:
        key = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
        ids = self._prompt_cache.get(key)
        if ids is None:
            messages = as_messages(prompt)
            if messages is not None:
                if not getattr(self.tokenizer, "chat_template", None):
                    raise ThumbsError(
                        "a prompt is a chat (list of messages) but the tokenizer has no chat template",
                        hint="use a chat/instruct model, or give prompts as plain text",
                    )
                ids = list(
                    self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
                )
            else:
                ids = self.tokenizer(str(prompt), add_special_tokens=True)["input_ids"]
            self._prompt_cache[key] = ids
        return ids

    def completion_ids(self, completions: list[str]) -> list[list[int]]:
        eos = self.tokenizer.eos_token_id
        encoded = self.tokenizer(list(completions), add_special_tokens=False)["input_ids"]
        return [ids + [eos] for ids in encoded]

    def fit(self, prompt: list[int], completion: list[int]) -> tuple[list[int], list[int]]:
        """Truncate to ``max_length``: the prompt loses tokens from its left, the completion from its right.

        The completion keeps priority (it carries the signal); at least one prompt token stays so the
        first completion token is predicted from something.
        """
        if self.max_prompt_length is not None and len(prompt) > self.max_prompt_length:
            prompt = prompt[-self.max_prompt_length :]
            self.truncated += 1
        if len(prompt) + len(completion) <= self.max_length:
            return prompt, completion
        self.truncated += 1
        keep_prompt = max(1, self.max_length - len(completion))
        prompt = prompt[-keep_prompt:]
        return prompt, completion[: self.max_length - len(prompt)]


def sequence(prompt: list[int], completion: list[int]) -> tuple[list[int], int]:
    """Token ids of prompt+completion and where the completion starts."""
    return prompt + completion, len(prompt)


def collate(seqs: list[tuple[list[int], int]], pad_id: int, pad_to_multiple: int = 1) -> dict:
    """Right-pad sequences into ``input_ids``, ``attention_mask`` and ``completion_mask`` [B, T]."""
    import torch

    width = max(len(ids) for ids, _ in seqs)
    width = -(-width // pad_to_multiple) * pad_to_multiple
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    completion_mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, (ids, start) in enumerate(seqs):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        completion_mask[row, start : len(ids)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def pack(seqs: list[tuple[list[int], int]], pad_id: int) -> dict:
    """Several sequences per row, no padding between them: ``collate``'s result without most of its padding.

    Sequences go into rows as wide as the longest one (first fit, longest first), so attention
    never spans more than one sequence's worth of positions. ``position_ids`` restart at 0 for each
    sequence and ``attention_mask`` is a block-diagonal causal mask [rows, 1, T, T] (True = attend):
    position ids alone do not keep packed sequences apart under SDPA or eager attention. The
    padding left at a row's end attends only to itself, so no query row is fully masked (NaN).
    ``segment_ids`` [rows, T] gives each token's sequence (its index in ``seqs``) for the per-sequence sums.
    ``row_lengths`` (a list) gives each row's used width, for running the rows one at a time without
    their padding (``completion_logps``; what pays on a CPU).
    """
    batch = _layout(seqs, pad_id, share=False)
    del batch["source_ids"]  # each token is predicted from the position before it
    return batch


SHARED_ROW_WIDTH = 512


def pack_shared(seqs: list[tuple[list[int], int]], pad_id: int) -> dict:
    """``pack``, with a prompt that several sequences share laid out once, their completions after it.

    Sequences whose prompts (``ids[:start]``) are identical form a tree in one row: the prompt,
    then each completion, every completion attending to the prompt and to itself (causally), never
    to its siblings, its positions continuing the prompt's. DPO's chosen and rejected share their
    prompt; so does every vote on a log whose votes answer one prompt (the demo's). The prompt is
    computed once instead of once per completion. Rows are as wide as the longest sequence, or as
    the largest tree up to ``SHARED_ROW_WIDTH``; a group wider than a row is split into several
    trees. ``source_ids`` [rows, T] gives, for each completion token, the row
    position whose hidden state predicts it (the previous position, or the prompt's last for a
    completion's first token; -1: nothing predicts it). The other keys are ``pack``'s.
    """
    return _layout(seqs, pad_id, share=True)


def _layout(seqs: list[tuple[list[int], int]], pad_id: int, share: bool) -> dict:
    """``pack_shared``'s rows; with ``share`` False every sequence is a tree of its own, which is
    exactly ``pack``'s layout (the prompt and completion of one sequence are contiguous)."""
    import torch

    longest = max(len(ids) for ids, _ in seqs)
    groups: dict[tuple, list[int]] = {}
    for i, (ids, start) in enumerate(seqs):
        groups.setdefault(tuple(ids[:start]) if share and start > 0 else ("alone", i), []).append(i)
    # Rows may widen to hold a tree, up to SHARED_ROW_WIDTH positions: attention's cost grows with
    # the square of the width, and past a few hundred positions it eats what sharing the prompt saves.
    trees = (seqs[g[0]][1] + sum(len(seqs[i][0]) - seqs[g[0]][1] for i in g) for g in groups.values())
    width = max(longest, min(max(trees), SHARED_ROW_WIDTH))
    units: list[tuple[int, list[int]]] = []  # (prompt length, members), each fitting one row
    for members in groups.values():
        prompt = seqs[members[0]][1]
        chunk, used = [], prompt
        for i in members:
            need = len(seqs[i][0]) - prompt
            if chunk and used + need > width:
                units.append((prompt, chunk))
                chunk, used = [], prompt
            chunk.append(i)
            used += need
        units.append((prompt, chunk))
    size = [prompt + sum(len(seqs[i][0]) - prompt for i in members) for prompt, members in units]
    rows: list[list[int]] = []  # unit indices per row, first fit, largest first
    room: list[int] = []
    for u in sorted(range(len(units)), key=lambda u: -size[u]):
        row = next((r for r, free in enumerate(room) if free >= size[u]), None)
        if row is None:
            rows.append([])
            room.append(width)
            row = len(rows) - 1
        rows[row].append(u)
        room[row] -= size[u]
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    completion_mask = torch.zeros(shape, dtype=torch.bool)
    segment_ids = torch.zeros(shape, dtype=torch.long)
    source_ids = torch.full(shape, -1, dtype=torch.long)
    block = torch.full(shape, -1, dtype=torch.long)  # the tree a position belongs to (-1: padding)
    branch = torch.full(shape, -1, dtype=torch.long)  # its completion within the tree (-1: the prompt)
    row_lengths = []
    for r, members in enumerate(rows):
        at = 0
        for k, u in enumerate(members):
            prompt, group = units[u]
            first = seqs[group[0]][0]
            input_ids[r, at : at + prompt] = torch.tensor(first[:prompt], dtype=torch.long)
            position_ids[r, at : at + prompt] = torch.arange(prompt)
            segment_ids[r, at : at + prompt] = group[0]
            block[r, at : at + prompt] = k
            last = at + prompt - 1  # the prompt's last position: it predicts each completion's first token
            at += prompt
            for b, i in enumerate(group):
                ids = seqs[i][0]
                n = len(ids) - prompt
                span = slice(at, at + n)
                input_ids[r, span] = torch.tensor(ids[prompt:], dtype=torch.long)
                position_ids[r, span] = torch.arange(prompt, len(ids))
                completion_mask[r, span] = True
                segment_ids[r, span] = i
                source_ids[r, span] = torch.arange(at - 1, at + n - 1)
                if n:
                    source_ids[r, at] = last if prompt else -1  # no prompt: nothing predicts it
                block[r, span] = k
                branch[r, span] = b
                at += n
        position_ids[r, at:] = torch.arange(width - at)
        row_lengths.append(at)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same_tree = block.unsqueeze(2) == block.unsqueeze(1)
    visible = (branch.unsqueeze(1) == -1) | (branch.unsqueeze(2) == branch.unsqueeze(1))
    attention_mask = same_tree & visible & causal
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask.unsqueeze(1),
        "completion_mask": completion_mask,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "source_ids": source_ids,
        "num_segments": len(seqs),
        "row_lengths": row_lengths,
    }
