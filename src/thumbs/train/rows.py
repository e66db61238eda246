"""On a CPU, a packed batch's rows run through the decoder as one row; attention stays per row.

Run one at a time (what pays on a CPU: no padding computed), a microbatch's 3-4 packed rows each
make their own pass through every layer, and in the backward each row's weight gradients are
added into the last row's: a full [out, in] read-add-write per linear layer per row, plus the
Python and thread overhead of every op again. Laid end to end in one row instead, the matmuls see
every token at once and each weight gradient comes out of one product. Attention must still not
cross rows, so the row carries its layout: the 4-D mask built for it (block-diagonal over the
original rows, correct on its own for any attention that reads it) has a ``_thumbs_rows`` attribute
listing each original row's span and its own mask, and transformers' ``sdpa`` attention is
replaced, for such masks only, by SDPA on each span. The layout travels with the mask because
gradient checkpointing saves the mask with the layer's inputs: the recompute in the backward finds
the same layout and splits the same way.

Measured on the 135M bench shape (two whole KTO steps of 874 and 1,303 tokens in 3 and 4 rows,
full fine-tuning with checkpointing, alternated in one process, ``/tmp/prof/ab_rows.py``): 17.2
and 17.3 s against 18.7, 18.8 and 20.1 s one row at a time (the first one-row repeat, 21.0 s,
carried the run's first optimizer step). Only for grad passes on a CPU (a no-grad pass has no
weight gradients to add up; a GPU keeps its batched rows) of models whose every layer attends
through SDPA to the whole sequence; a ``Continuation`` (KTO's KL pass) keeps its own rows.
"""

from __future__ import annotations

import torch

ROWS = "_thumbs_rows"  # the attribute of a one-row mask that lists its rows
# positions per joined row: its [T, T] boolean mask stays at most 16 MiB (a microbatch of more
# positions is joined in several rows of consecutive rows)
MAX_POSITIONS = 4096
_INSTALLED: list = []  # non-empty once transformers' sdpa entry points at ``sdpa`` below


def sdpa(module, query, key, value, attention_mask, attend=None, **kwargs):
    """transformers' SDPA attention; for a mask with a row layout, SDPA on each row's span with that
    row's own mask (``attend(row, key, value, mask)``, when given, may change a row's keys first)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layout = layout_of(attention_mask)
    if layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outputs = []
    for start, end, mask, row in layout:
        k, v, m = key[:, :, start:end], value[:, :, start:end], mask
        if attend is not None:
            k, v, m = attend(row, k, v, m)
        outputs.append(sdpa_attention_forward(module, query[:, :, start:end], k, v, m, **kwargs)[0])
    return torch.cat(outputs, dim=1), None


def install() -> None:
    """Let transformers' ``sdpa`` attention split one-row masks (every other mask: unchanged)."""
    if not _INSTALLED:
        from transformers import AttentionInterface

        AttentionInterface.register("sdpa", sdpa)
        _INSTALLED.append(True)


def groups(row_lengths: list[int], most: int | None = None) -> list[list[int]]:
    """Consecutive rows, as many per group as fit in ``most`` positions (a wider row: alone)."""
    most = MAX_POSITIONS if most is None else most
    out: list[list[int]] = []
    used = 0
    for r, width in enumerate(row_lengths):
        if out and used + width <= most:
            out[-1].append(r)
            used += width
        else:
            out.append([r])
            used = width
    return out


def one_row(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    position_ids: torch.Tensor,
    segment_ids: torch.Tensor,
    source_ids: torch.Tensor | None,
    row_lengths: list[int],
    first_row: int,
) -> dict:
    """A packed batch's rows, each cut to its used width, laid end to end in one row: the keyword
    arguments of ``completion_logps`` for it (``source_ids`` moved with their rows)."""
    starts = [sum(row_lengths[:r]) for r in range(len(row_lengths))]
    total = sum(row_lengths)

    def joined(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t[r, :w] for r, w in enumerate(row_lengths)]).unsqueeze(0)

    mask = torch.zeros(1, 1, total, total, dtype=torch.bool, device=input_ids.device)
    layout = []
    for r, (start, width) in enumerate(zip(starts, row_lengths)):
        own = attention_mask[r : r + 1, :, :width, :width]
        mask[0, 0, start : start + width, start : start + width] = own[0, 0]
        layout.append((start, start + width, own, first_row + r))
    setattr(mask, ROWS, layout)
    batch = {
        "input_ids": joined(input_ids),
        "attention_mask": mask,
        "completion_mask": joined(completion_mask),
        "position_ids": joined(position_ids),
        "segment_ids": joined(segment_ids),
    }
    if source_ids is not None:
        moved = [torch.where(source_ids[r, :w] >= 0, source_ids[r, :w] + s, -1) for r, (s, w) in
                 enumerate(zip(starts, row_lengths))]  # fmt: skip
        batch["source_ids"] = torch.cat(moved).unsqueeze(0)
    return batch


def layout_of(attention_mask) -> list | None:
    """A one-row mask's rows: (start, end, own mask, row number) each; None for any other mask."""
    return getattr(attention_mask, ROWS, None)
