"""A no-grad pass that continues prompts the grad pass has already computed (KTO's KL sequences).

KTO's KL sequence for example i is i's prompt followed by another example's completion; the example
itself is the same prompt followed by its own completion. The grad pass computes that prompt anyway,
so while it runs, ``Record`` keeps each prompt's keys and values at every layer (detached) and the
final hidden state at its last position; the KL pass then runs only the KL completions, each
attending to its prompt's recorded keys and values and to itself, its positions continuing the
prompt's, its first token predicted from the recorded hidden state (``Continuation``). On the 135M
bench shape the prompts are about a quarter of a KL sequence's tokens (a step's KL pass computes
735.5 tokens instead of 965).

The log-probs are those of the whole sequence computed at once, up to rounding (the attention sums
the same terms in another order); ``tests/test_prefix.py`` holds them to 1e-5.

Both run through one attention function (``prefix_attention``: transformers' SDPA with the recorded
keys and values put in front), switched on for the length of a decoder call. It is used only where
attention is SDPA over the whole sequence (``supported``); sliding windows, eager attention (Gemma
2's softcap) and flash kernels keep the full KL pass. A KL sequence whose prompt is not the
example's (truncation can cut the two differently) is run whole, in the same pass.

The record lives from the grad pass's forward to the end of the KL pass, before the backward, so it
adds nothing to the step's peak (the backward's, with every gradient allocated). It holds two
[key/value heads x head dim] vectors per prompt token per layer: 46 KB a token on SmolLM2-135M in
float32, less than the checkpointed layer inputs the grad pass keeps anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PREFIX_ATTENTION = "thumbs_prefix"

_ACTIVE: Record | Continuation | None = None  # what the decoder call running now records or reads


def prefix_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA; while a ``Record`` is active it keeps the prompts' keys and values, while a
    ``Continuation`` is active it attends to the recorded ones as well. A one-row mask
    (``thumbs.train.rows``) is attended row by row, each row recorded as its own."""
    from thumbs.train import rows

    if _ACTIVE is None:
        return rows.sdpa(module, query, key, value, attention_mask, **kwargs)
    if rows.layout_of(attention_mask) is not None:
        state, layer = _ACTIVE, module.layer_idx
        attend = lambda row, k, v, m: state.attend_row(layer, row, k, v, m)  # noqa: E731
        return rows.sdpa(module, query, key, value, attention_mask, attend=attend, **kwargs)
    key, value, attention_mask = _ACTIVE.attend(module.layer_idx, key, value, attention_mask)
    return rows.sdpa(module, query, key, value, attention_mask, **kwargs)


def supported(model) -> bool:
    """Whether every layer attends through SDPA to the whole sequence, so a prompt can be continued."""
    from thumbs.train.logprobs import sdpa_everywhere

    return sdpa_everywhere(model)


def shared_length(own: tuple[list[int], int], other: tuple[list[int], int]) -> int:
    """How many leading tokens of ``own`` (ids, completion start) the grad pass's ``other`` computes:
    all of own's prompt when other's prompt begins with it, else 0."""
    ids, start = own
    other_ids, other_start = other
    return start if 0 < start <= other_start and ids[:start] == other_ids[:start] else 0


@contextlib.contextmanager
def _serving(state: Record | Continuation, model, rows: list[int]) -> Iterator[None]:
    global _ACTIVE
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from thumbs.train.logprobs import base_model

    AttentionInterface.register(PREFIX_ATTENTION, prefix_attention)
    AttentionMaskInterface.register(PREFIX_ATTENTION, sdpa_mask)
    config = base_model(model).config
    before = config._attn_implementation
    config._attn_implementation, _ACTIVE, state.rows = PREFIX_ATTENTION, state, rows
    try:
        yield
    finally:
        config._attn_implementation, _ACTIVE, state.rows = before, None, []


class Record:
    """Keys, values and last hidden state of the grad pass's prompts that a KL pass will continue.

    ``want`` maps a grad-pass sequence (its index among the pass's sequences) to how many of its
    leading tokens to keep. ``locate`` finds them in the packed batch before the pass runs.
    """

    def __init__(self, want: dict[int, int]):
        self.want = want
        self.spans: dict[int, tuple[int, int, int]] = {}  # sequence -> (row, first column, length)
        self.keys: dict[int, dict[int, torch.Tensor]] = {}  # sequence -> layer -> [KV heads, length, D]
        self.values: dict[int, dict[int, torch.Tensor]] = {}
        self.last: dict[int, torch.Tensor] = {}  # sequence -> final hidden state [H] at its last kept token
        self.rows: list[int] = []

    def locate(self, batch: dict) -> None:
        """Where each wanted sequence's prompt lies in ``pack_shared``'s rows: just before the column
        that predicts its first completion token is laid out, contiguous, positions 0 onwards."""
        completion, segment, source = batch["completion_mask"], batch["segment_ids"], batch["source_ids"]
        for row, col in (completion & (source >= 0)).nonzero().tolist():
            seq = int(segment[row, col])
            if seq in self.want and seq not in self.spans:
                last = int(source[row, col])  # the last prompt token of this sequence's tree
                first = last - int(batch["position_ids"][row, last])
                if self.want[seq] <= last - first + 1:
                    self.spans[seq] = (row, first, self.want[seq])

    def serving(self, model, rows: list[int]):
        return _serving(self, model, rows) if self.spans else contextlib.nullcontext()

    def attend(self, layer: int, key, value, mask):
        for b, row in enumerate(self.rows):
            self.attend_row(layer, row, key[b : b + 1], value[b : b + 1], None)
        return key, value, mask

    def attend_row(self, layer: int, row: int, key, value, mask):
        """``attend`` for one row's keys and values [1, heads, width, dim]."""
        for seq, (r, first, length) in self.spans.items():
            if r == row:
                self.keys.setdefault(seq, {})[layer] = key[0, :, first : first + length].detach().clone()
                self.values.setdefault(seq, {})[layer] = value[0, :, first : first + length].detach().clone()
        return key, value, mask

    def predicted(self, rows, input_ids, hidden):
        return None  # the grad pass predicts its own tokens

    def after(self, hidden: torch.Tensor, rows: list[int]) -> None:
        for b, row in enumerate(rows):
            for seq, (r, first, length) in self.spans.items():
                if r == row:
                    self.last[seq] = hidden[b, first + length - 1].detach().clone()

    def release(self) -> None:
        """Let the recorded tensors go: the KL pass has read them, and the backward should not hold them."""
        self.keys, self.values, self.last = {}, {}, {}


class Continuation:
    """The KL pass's side of a ``Record``: which recorded prompt each of its rows attends to."""

    def __init__(self, record: Record, batch: dict, source: dict[int, int], lengths: dict[int, int]):
        """``source[i]``: the recorded sequence whose prompt sequence i continues (``lengths[i]``
        tokens of it); ``batch``: the continuation's rows (``continuation_batch``)."""
        self.record, self.rows = record, []
        segment, completion = batch["segment_ids"], batch["completion_mask"]
        rows, width = segment.shape
        self.order: list[list[tuple[int, int]]] = []  # per row, its prefix: (recorded sequence, tokens)
        self.first: list[list[tuple[int, int, int]]] = []  # per row: (column, sequence, recorded sequence)
        masks = []
        for r in range(rows):
            members = sorted({int(s) for s in segment[r][completion[r]].tolist()} & set(source))
            self.order.append([(source[i], lengths[i]) for i in members])
            total = sum(lengths[i] for i in members)
            mask = torch.zeros(width, total, dtype=torch.bool)
            firsts, at = [], 0
            for i in members:
                cols = ((segment[r] == i) & completion[r]).nonzero().flatten()
                mask[cols, at : at + lengths[i]] = True
                firsts.append((int(cols[0]), i, source[i]))
                at += lengths[i]
            masks.append(mask)
            self.first.append(firsts)
        self.masks = masks
        self._prefix_mask: tuple | None = None  # (rows, width, mask): the same for every layer

    def serving(self, model, rows: list[int]):
        return _serving(self, model, rows)

    def attend(self, layer: int, key, value, mask):
        width = key.shape[2]
        longest = max(self.masks[r].shape[1] for r in self.rows)
        if longest == 0:
            return key, value, mask
        if mask is None or mask.dtype != torch.bool:  # continuation_batch always gives one
            raise TypeError("prefix attention takes the continuation's boolean 4-D mask")
        heads, dim = key.shape[1], key.shape[3]
        pk = key.new_zeros(len(self.rows), heads, longest, dim)
        pv = value.new_zeros(len(self.rows), heads, longest, dim)
        for b, r in enumerate(self.rows):
            at = 0
            for seq, length in self.order[r]:
                pk[b, :, at : at + length] = self.record.keys[seq][layer][:, :length]
                pv[b, :, at : at + length] = self.record.values[seq][layer][:, :length]
                at += length
        if self._prefix_mask is None or self._prefix_mask[:2] != (self.rows, width):
            pm = torch.zeros(len(self.rows), 1, width, longest, dtype=torch.bool, device=key.device)
            for b, r in enumerate(self.rows):
                pm[b, 0, :, : self.masks[r].shape[1]] = self.masks[r][:width].to(key.device)
            self._prefix_mask = (self.rows, width, pm)
        pm = self._prefix_mask[2]
        return (
            torch.cat([pk, key], dim=2),
            torch.cat([pv, value], dim=2),
            torch.cat([pm, mask.expand(len(self.rows), -1, -1, -1)], dim=-1),
        )

    def after(self, hidden: torch.Tensor, rows: list[int]) -> None:
        pass

    def predicted(self, rows: list[int], input_ids: torch.Tensor, hidden: torch.Tensor):
        """The first tokens of the continued sequences in ``rows``, predicted from the recorded prompts'
        last hidden states: (hidden [n, H], target ids [n], sequence index [n])."""
        picked, targets, segs = [], [], []
        for b, r in enumerate(rows):
            for col, seq, recorded in self.first[r]:
                if col < input_ids.shape[1]:
                    picked.append(self.record.last[recorded].to(hidden.dtype))
                    targets.append(input_ids[b, col])
                    segs.append(seq)
        if not picked:
            return None
        device = hidden.device
        return torch.stack(picked), torch.stack(targets), torch.tensor(segs, dtype=torch.long, device=device)


def continuation_batch(seqs: list[tuple[list[int], int]], lengths: list[int], pad_id: int) -> dict:
    """``pack_shared``'s rows for ``seqs`` with the first ``lengths[i]`` tokens of
    sequence i left out (they are a recorded prompt): what remains of a continued sequence is all
    completion, its positions starting at ``lengths[i]``, its first token predicted by the record
    (``source_ids`` -1 there)."""
    from thumbs.tokenize import pack_shared

    rest = [(ids[n:], start - n) for (ids, start), n in zip(seqs, lengths)]
    batch = pack_shared(rest, pad_id)  # sequences run whole still share a prompt they have in common
    segment, completion = batch["segment_ids"], batch["completion_mask"]
    for i, n in enumerate(lengths):
        if n:
            batch["position_ids"][(segment == i) & completion] += n
    return batch
