"""KL(π‖π_ref) along the policy's own samples, two ways, from one teacher-forced pass per model.

For samples y ~ π(·|x), per completion (nats):

- sequence level: log π(y|x) − log π_ref(y|x). Unbiased, but it carries the sampling noise of
  every token of y, so its spread is wide and a single sample can be negative.
- token level: Σ_t KL(π(·|x, y<t) ‖ π_ref(·|x, y<t)) over the positions of y (its stop token
  included), with the full next-token distributions of both models. Its expectation is the same
  KL (the chain rule: the KL of sequence distributions is E_y Σ_t of the next-token KLs), but
  each term averages over the whole vocabulary instead of one drawn token: far lower variance,
  and never negative.

Both come from the same hidden states: the reference runs once over prompt + completion (a
prompt several samples share runs once, see ``sampling.prefill``); the policy's states are the
ones its sampling computed (kept while they fit in ``KEEP_BYTES``, else the policy runs here
too). The LM heads are applied a chunk of positions at a time, so the [chunk, vocab] log-probs
are the largest tensors ever held, never [batch, length, vocab].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from thumbs.eval.sampling import base_model, head_logits, prefill

CHUNK = 128  # positions per LM-head call: two [CHUNK, vocab] float32 log-prob tensors at a time
KEEP_BYTES = 512 * 2**20  # the most the policy's sampling-time hidden states may hold for reuse


def keep_sampling_states(model: Any, n: int, max_new_tokens: int) -> bool:
    """Whether n samples' hidden states ([n, max_new_tokens, H] at most) fit in ``KEEP_BYTES``."""
    config = base_model(model).config
    hidden = getattr(config, "hidden_size", None) or config.get_text_config().hidden_size
    return n * max_new_tokens * hidden * 4 <= KEEP_BYTES


def completion_hidden(
    model: Any, prompts: Sequence[list[int]], completions: Sequence[list[int]], pad_id: int
) -> torch.Tensor:
    """Final hidden states [N, H] that predict each completion token, row by row, in order."""
    device = next(model.parameters()).device
    cache, last, attention_mask, position = prefill(model, prompts, pad_id)
    width = max(len(c) for c in completions)
    if width <= 1:
        predicting = last.unsqueeze(1)
    else:
        ids = torch.full((len(completions), width - 1), pad_id, dtype=torch.long)
        mask = torch.zeros((len(completions), width - 1), dtype=torch.long)
        for row, tokens in enumerate(completions):
            fed = tokens[:-1]  # the last token predicts nothing that is scored
            ids[row, : len(fed)] = torch.tensor(fed, dtype=torch.long)
            mask[row, : len(fed)] = 1
        steps = torch.arange(width - 1, device=device)
        hidden = (
            base_model(model)
            .get_decoder()(
                input_ids=ids.to(device),
                attention_mask=torch.cat([attention_mask, mask.to(device)], dim=1),
                position_ids=position.unsqueeze(1) + steps,
                cache=cache,
                use_cache=True,
            )
            .last_hidden_state
        )
        predicting = torch.cat([last.unsqueeze(1), hidden], dim=1)
    scored = torch.zeros(predicting.shape[:2], dtype=torch.bool, device=device)
    for row, tokens in enumerate(completions):
        scored[row, : len(tokens)] = True
    return predicting[scored]


def kl_along_samples(
    policy: Any,
    reference_scope: Callable[[], Any],
    prompts: Sequence[list[int]],
    completions: Sequence[list[int]],
    pad_id: int,
    batch_size: int,
    chunk_size: int = CHUNK,
    policy_hidden: Sequence[torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: (log π(y|x) − log π_ref(y|x), Σ_t KL(π(·|x,y<t) ‖ π_ref(·|x,y<t))), float64.

    ``completions`` are the policy's own samples of ``prompts``; ``reference_scope()`` is a
    context manager that yields the reference (for a LoRA run: the policy with its adapter off).
    ``policy_hidden``: the policy's hidden states per sample as sampling left them
    (``generate(hidden_out=...)``), so only the reference runs here.
    """
    log_ratio, token_kl = np.zeros(len(prompts)), np.zeros(len(prompts))
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            rows = list(prompts[start : start + batch_size])
            samples = list(completions[start : start + batch_size])
            keep = [i for i, tokens in enumerate(samples) if tokens]  # an empty completion adds 0
            if not keep:
                continue
            rows, samples = [rows[i] for i in keep], [samples[i] for i in keep]
            kept_hidden = None if policy_hidden is None else [policy_hidden[start + i] for i in keep]
            device = next(policy.parameters()).device
            targets = torch.tensor([t for tokens in samples for t in tokens], device=device)
            owner = torch.tensor([i for i, tokens in enumerate(samples) for _ in tokens], device=device)
            if kept_hidden is None:
                hidden = completion_hidden(policy, rows, samples, pad_id)
            else:
                hidden = torch.cat(list(kept_hidden)).to(device)
            with reference_scope() as reference:
                reference_hidden = completion_hidden(reference, rows, samples, pad_id)
            ratio = torch.zeros(len(samples), dtype=torch.float64, device=device)
            kl = torch.zeros(len(samples), dtype=torch.float64, device=device)
            for c in range(0, len(targets), chunk_size):
                part = slice(c, c + chunk_size)
                logp = torch.log_softmax(head_logits(policy, hidden[part]), dim=-1)
                with reference_scope() as reference:
                    logq = torch.log_softmax(head_logits(reference, reference_hidden[part]), dim=-1)
                picked = targets[part].unsqueeze(-1)
                step_ratio = (logp.gather(-1, picked) - logq.gather(-1, picked)).squeeze(-1)
                step_kl = (logp.exp() * (logp - logq)).sum(-1)
                ratio.index_add_(0, owner[part], step_ratio.double())
                kl.index_add_(0, owner[part], step_kl.double())
            at = np.asarray(keep) + start
            log_ratio[at], token_kl[at] = ratio.cpu().numpy(), kl.cpu().numpy()
    return log_ratio, token_kl
