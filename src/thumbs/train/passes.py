"""The forward passes of a training step: a microbatch's sequences with or without gradient in one
call, and the no-grad pass that continues prompts the grad pass has computed (``thumbs.train.prefix``)."""

from __future__ import annotations

from typing import Any

Run = Any  # thumbs.train.loop.Run (importing it here would make a cycle)


def forward(run: Run, roles: tuple[str, ...], index: list[int], continued: dict | None = None):
    """Log-probs and completion token counts of ``roles``' sequences for ``index``, in one call.

    With ``continued`` (``continued_for``'s), the pass also records the prompts it names."""
    import torch

    from thumbs.tokenize import collate, pack_shared

    if not roles:
        return {}, {}, 0
    seqs = [run.items.seqs[role][i] for role in roles for i in index]
    batch = (pack_shared if run.cfg.train.packing else collate)(seqs, run.tokenizer.pad_token_id)
    if continued:
        continued["record"].locate(batch)
        batch["prefix"] = continued["record"]
    batch = {k: v.to(run.accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    logps, tokens = run.wrapped(**batch)
    n = len(index)
    return (
        {r: logps[j * n : (j + 1) * n] for j, r in enumerate(roles)},
        {r: tokens[j * n : (j + 1) * n] for j, r in enumerate(roles)},
        sum(len(ids) for ids, _ in seqs),
    )


def continued_for(run: Run, index: list[int]) -> dict | None:
    """For a method whose no-grad sequences share their prompt with a grad sequence (KTO's KL
    sequences), which of them the no-grad pass can continue from the grad pass's prompts
    (``thumbs.train.prefix``): {"lengths": {role: [tokens shared, per example]}, "record": Record};
    None where none can (packing off, attention that is not plain SDPA, no shared prompt)."""
    from thumbs.train import prefix

    method = run.method
    if not method.continues or not run.cfg.train.packing or not prefix.supported(run.model):
        return None
    seqs, n = run.items.seqs, len(index)
    lengths, want = {}, {}
    for role, onto in method.continues.items():
        at = method.grad_roles.index(onto) * n  # where ``onto``'s sequences sit in the grad pass
        lengths[role] = [prefix.shared_length(seqs[role][i], seqs[onto][i]) for i in index]
        for k, length in enumerate(lengths[role]):
            if length:
                want[at + k] = max(want.get(at + k, 0), length)
    if not want:
        return None
    return {"lengths": lengths, "record": prefix.Record(want)}


def continue_forward(run: Run, roles: tuple[str, ...], index: list[int], continued: dict) -> dict:
    """``forward``'s log-probs for no-grad ``roles``, each sequence run from where the prompt the
    grad pass recorded ends (the whole sequence where none was recorded for it)."""
    import torch

    from thumbs.train import prefix

    record, n = continued["record"], len(index)
    seqs, lengths, source = [], [], {}
    for role in roles:
        onto = run.method.continues.get(role)
        for k, i in enumerate(index):
            at = len(seqs)
            seqs.append(run.items.seqs[role][i])
            grad_at = run.method.grad_roles.index(onto) * n + k if onto else None
            length = continued["lengths"][role][k] if onto else 0
            if length and grad_at in record.spans and record.spans[grad_at][2] >= length:
                source[at] = grad_at
                lengths.append(length)
            else:
                lengths.append(0)
    batch = prefix.continuation_batch(seqs, lengths, run.tokenizer.pad_token_id)
    batch["prefix"] = prefix.Continuation(record, batch, source, dict(enumerate(lengths)))
    batch = {k: v.to(run.accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    logps, _ = run.wrapped(**batch)
    record.release()
    return {r: logps[j * n : (j + 1) * n] for j, r in enumerate(roles)}
