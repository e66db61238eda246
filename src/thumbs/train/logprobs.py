"""Sequence log-probabilities of completions, without a full-vocabulary float32 log-softmax.

The decoder runs once over the batch; the LM head is applied only at the positions that predict a
completion token (prompt and padding positions never produce logits), a chunk of positions at a
time, with the log-softmax taken in float32 per chunk. A plain head runs in vocabulary blocks fused
with the log-softmax (``thumbs.train.head``); any other is checkpointed per chunk, so only its
hidden states are kept for the backward pass, never its [chunk, vocab] logits.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from thumbs.train import rows as row_layout
from thumbs.train.head import head_token_logps, plain_head

# In a no-grad pass on a CPU, rows at least this wide run one at a time; narrower ones stay one
# batched call (a demo-shaped KTO step, 8 + 8 sequences of 60-120 tokens with LoRA on the 135M
# shape, took 4.6-4.8 s with its rows in one call against 5.0-5.8 s row by row). A grad pass joins
# its rows into one at any width (``thumbs.train.rows``): no padding and one product per weight.
# On bench/contention.py's demo-shaped job (byte-level tokens cut at 128, so most rows hold one
# sequence), steps 2-6 of a KTO run took 27.4 and 29.7 s joined against 41.5 and 38.2 s with narrow
# rows batched, where a microbatch's 6 rows of up to 222 positions padded 35% of them. (`make demo`
# packs each of its microbatches into a single row: nothing to join there.)
PER_ROW_MIN_WIDTH = 256


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers stay active inside it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on ``hidden`` [..., H], in (at least) float32, as the model's forward finishes it.

    The model families that change their logits after the head: Gemma 2's softcap, Granite's
    ``logits_scaling`` (divides), Cohere's ``logit_scale`` (multiplies). The head is called as a
    module, so an adapter on it takes part.
    """
    base = base_model(model)
    logits = base.get_output_embeddings()(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    config = base.config
    if getattr(config, "logits_scaling", None):
        logits = logits / config.logits_scaling
    if getattr(config, "logit_scale", None):
        logits = logits * config.logit_scale
    softcap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def _chunk_logps(hidden: torch.Tensor, targets: torch.Tensor, model: nn.Module):
    logits = head_logits(model, hidden)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_logps_at(model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int = 256):
    """log p(target) for each row of ``hidden`` [N, H] under the model's LM head, in chunks: for a
    plain head in vocabulary blocks fused with the log-softmax (``thumbs.train.head``), otherwise
    as the model finishes its logits, each chunk checkpointed."""
    base = base_model(model)
    head = plain_head(base)
    if head is not None:
        return head_token_logps(head, hidden, targets, chunk_size)
    out = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            out.append(checkpoint(_chunk_logps, h, t, base, use_reentrant=False))
        else:
            out.append(_chunk_logps(h, t, base))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def completion_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    chunk_size: int = 256,
    segment_ids: torch.Tensor | None = None,
    num_segments: int | None = None,
    row_lengths: list[int] | None = None,
    source_ids: torch.Tensor | None = None,
    prefix=None,
    first_row: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of completion-token log-probs per sequence [B] (float32) and completion token counts [B].

    ``completion_mask[b, t]`` marks token t as part of the completion; it is predicted from position
    t-1. For packed rows, ``segment_ids[b, t]`` names the sequence a token belongs to and the sums
    come back per segment (``num_segments`` of them). With ``row_lengths`` (packed rows only), on a
    CPU the decoder runs one row at a time, each cut to its used width, so no padding is computed
    at all: a CPU matmul's speed hardly depends on how many rows it has (about 10% faster on the
    135M bench shape, where packed rows are 70-99% full). Narrow rows (short answers) are too small
    a matmul on their own: under ``PER_ROW_MIN_WIDTH`` positions they stay one batched call, as on a GPU.
    A grad pass on a CPU lays its rows end to end in one row instead, at any width
    (``thumbs.train.rows``: no padding, one product per weight gradient, attention still per row).
    With ``source_ids`` (``pack_shared``'s rows, where completions follow a shared prompt), token t
    is predicted from position ``source_ids[b, t]`` instead of t-1.
    ``prefix`` (``thumbs.train.prefix``): a ``Record`` keeps the prompts a KL pass will continue, a
    ``Continuation`` runs that pass (rows numbered from ``first_row``).
    """
    cpu_rows = row_lengths is not None and input_ids.device.type == "cpu"
    if (
        cpu_rows
        and len(row_lengths) > 1
        and torch.is_grad_enabled()
        and _one_row_fits(model, attention_mask, prefix)
    ):
        row_layout.install()
        sums = tokens = 0
        for group in row_layout.groups(row_lengths):
            span = slice(group[0], group[-1] + 1)
            joined = row_layout.one_row(
                input_ids[span], attention_mask[span], completion_mask[span], position_ids[span],
                segment_ids[span], None if source_ids is None else source_ids[span], row_lengths[span],
                first_row + group[0],
            )  # fmt: skip
            s, t = completion_logps(
                model, **joined, chunk_size=chunk_size, num_segments=num_segments, prefix=prefix
            )
            sums, tokens = sums + s, tokens + t
        return sums, tokens
    if cpu_rows and input_ids.shape[1] >= PER_ROW_MIN_WIDTH:
        sums = tokens = 0
        for r, width in enumerate(row_lengths):
            s, t = completion_logps(
                model,
                input_ids[r : r + 1, :width],
                attention_mask[r : r + 1, :, :width, :width],
                completion_mask[r : r + 1, :width],
                position_ids[r : r + 1, :width],
                chunk_size,
                segment_ids[r : r + 1, :width],
                num_segments,
                source_ids=None if source_ids is None else source_ids[r : r + 1, :width],
                prefix=prefix,
                first_row=first_row + r,
            )
            sums, tokens = sums + s, tokens + t
        return sums, tokens
    base = base_model(model)
    kwargs = {"input_ids": input_ids, "use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = _for_attention(base, attention_mask)
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if prefix is None:
        hidden = base.get_decoder()(**kwargs).last_hidden_state
    else:
        layout = row_layout.layout_of(attention_mask)
        here = (
            [row for *_, row in layout] if layout else list(range(first_row, first_row + input_ids.shape[0]))
        )
        with prefix.serving(model, here):
            hidden = base.get_decoder()(**kwargs).last_hidden_state
        if layout:  # one row standing for several: each recorded as its own
            for start, end, _, row in layout:
                prefix.after(hidden[:, start:end], [row])
        else:
            prefix.after(hidden, here)
    if source_ids is not None:  # each completion token from the position ``source_ids`` names
        row, col = (completion_mask & (source_ids >= 0)).nonzero(as_tuple=True)
        selected, targets = hidden[row, source_ids[row, col]], input_ids[row, col]
        rows, count = segment_ids[row, col], num_segments
        first = prefix.predicted(here, input_ids, hidden) if prefix is not None else None
        if first is not None:  # continued sequences' first tokens, from their recorded prompts
            selected, targets, rows = (torch.cat(pair) for pair in zip((selected, targets, rows), first))
    else:  # each from the position before it
        predict = completion_mask[:, 1:]
        selected, targets = hidden[:, :-1][predict], input_ids[:, 1:][predict]
        if segment_ids is None:
            rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(predict)
            rows, count = rows[predict], input_ids.shape[0]
        else:
            rows, count = segment_ids[:, 1:][predict], num_segments
    token_logps = token_logps_at(model, selected, targets, chunk_size)
    sums = torch.zeros(count, dtype=torch.float32, device=hidden.device).index_add(0, rows, token_logps)
    tokens = torch.zeros(count, dtype=torch.long, device=hidden.device).index_add(
        0, rows, torch.ones_like(rows)
    )
    return sums, tokens


def sdpa_everywhere(model: nn.Module) -> bool:
    """Whether every layer attends through SDPA to the whole sequence (no sliding window, no softcap)."""
    config = base_model(model).config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    return getattr(config, "attn_logit_softcapping", None) is None


def _one_row_fits(model: nn.Module, attention_mask, prefix) -> bool:
    """Whether a packed batch's rows can run as one (``thumbs.train.rows``): nothing continued (a
    ``Record`` is fine), a boolean 4-D mask, every layer attending through SDPA to the whole sequence."""
    if prefix is not None and not hasattr(prefix, "attend_row"):
        return False
    if attention_mask is None or attention_mask.dim() != 4 or attention_mask.dtype != torch.bool:
        return False
    return sdpa_everywhere(model)


def _for_attention(base: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """A packed row's block-diagonal mask as the model's attention takes it. SDPA reads a boolean
    mask; eager attention (Gemma 2's, for its logit softcap) adds the mask to the scores, so it gets
    0 where a position may attend and the dtype's minimum elsewhere."""
    if (
        mask.dim() != 4
        or mask.dtype != torch.bool
        or getattr(base.config, "_attn_implementation", None) != "eager"
    ):
        return mask
    dtype = next(base.parameters()).dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


class CompletionLogps(nn.Module):
    """A causal LM whose forward returns completion log-probs, so DDP/FSDP see one forward call."""

    def __init__(self, model: nn.Module, chunk_size: int = 256):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        # FSDP's transformer-based wrapping reads the layer classes to shard from here
        self._no_split_modules = getattr(base_model(model), "_no_split_modules", None)

    def forward(self, **batch) -> tuple[torch.Tensor, torch.Tensor]:
        return completion_logps(self.model, chunk_size=self.chunk_size, **batch)
