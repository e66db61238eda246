"""Sampling completions for evaluation: batched, KV-cached, one random stream per sample.

Each sample i draws its own uniforms from a generator seeded by (seed, i), and picks the token
whose cumulative probability (in vocabulary order) first exceeds its uniform: inverse-CDF
sampling. So a sample does not depend on which batch it ran in, the policy and the reference
see the same random numbers for the same prompt, identical models give identical samples, and
close models give mostly shared tokens (common random numbers: a paired comparison with less
noise). ``generate`` runs greedily over the processed scores, which hold one finite entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from thumbs.cores import adjust_threads
from thumbs.tokenize import collate
from thumbs.train.logprobs import completion_logps


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index``: independent streams for every (seed, index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class InverseCDFSampler(LogitsProcessor):
    """Replaces each row's scores with a one-hot pick made from that row's own uniforms."""

    def __init__(self, uniforms: torch.Tensor, prompt_width: int, temperature: float, top_p: float):
        self.uniforms, self.prompt_width = uniforms, prompt_width
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature == 0:
            return scores  # greedy
        step = input_ids.shape[1] - self.prompt_width
        probs = torch.softmax(scores.double() / self.temperature, dim=-1)
        if self.top_p < 1:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs >= self.top_p  # the first token always stays
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
        cdf = probs.cumsum(-1)
        target = (self.uniforms[:, step].to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
        tokens = torch.searchsorted(cdf, target, right=True).clamp(max=scores.shape[-1] - 1)
        picked = torch.full_like(scores, float("-inf"))
        return picked.scatter(-1, tokens, 0.0)


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a completion: the tokenizer's EOS and the model's generation EOS ids."""
    ids = {tokenizer.eos_token_id}
    generation = getattr(model, "generation_config", None)
    extra = getattr(generation, "eos_token_id", None) if generation is not None else None
    ids.update(extra if isinstance(extra, list) else [extra])
    return sorted(i for i in ids if i is not None)


def generate(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[list[int]],
    seeds: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    progress: Any = None,
) -> list[list[int]]:
    """Completion token ids per prompt (up to and including a stop token), prompts left-padded."""
    device = next(model.parameters()).device
    stops = stop_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    # Explicit neutral settings: a model's own generation defaults (penalties) must not bend the samples.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        eos_token_id=stops,
        pad_token_id=pad_id,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
    )
    completions: list[list[int]] = []
    for start in range(0, len(prompt_ids), batch_size):
        adjust_threads()
        rows = prompt_ids[start : start + batch_size]
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        uniforms = torch.stack(
            [
                torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                for s in seeds[start : start + batch_size]
            ]
        )
        sampler = InverseCDFSampler(uniforms, width, temperature, top_p)
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler]),
            )
        for tokens in out[:, width:].tolist():
            cut = next((i + 1 for i, token in enumerate(tokens) if token in stops), len(tokens))
            completions.append(tokens[:cut])
        if progress is not None:
            progress.update(len(rows))
    return completions


def sequence_logps(
    model: Any,
    prompt_ids: Sequence[list[int]],
    completion_ids: Sequence[list[int]],
    pad_id: int,
    batch_size: int,
) -> np.ndarray:
    """log π(completion | prompt) summed over completion tokens, per pair, as float64."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        seqs = [
            (p + c, len(p))
            for p, c in zip(
                prompt_ids[start : start + batch_size], completion_ids[start : start + batch_size]
            )
        ]
        batch = {k: v.to(device) for k, v in collate(seqs, pad_id).items()}
        with torch.inference_mode():
            logps, _ = completion_logps(model, **batch)
        out.append(logps.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
