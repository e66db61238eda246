"""A policy's own answers to a set of prompts: ``per_prompt`` samples each, drawn with the eval
sampler (thumbs.eval.sampling: one seeded random stream per sample, so a rerun gives the same
answers). A plain-text prompt is sent as one user message when the tokenizer has a chat template,
as a deployed chat model would see it; chat prompts travel as JSON text, as in events.parquet."""

from __future__ import annotations

import json
from typing import Any

from thumbs.tokenize import as_messages


def as_prompt(prompt: Any, chat: bool) -> str:
    """The prompt as the feedback log stores it: JSON text of its messages, or plain text."""
    messages = as_messages(prompt)
    if messages is None and chat:
        messages = [{"role": "user", "content": str(prompt)}]
    return json.dumps(messages, ensure_ascii=False) if messages is not None else str(prompt)


def answer(
    model_path: str,
    prompts: list[Any],
    per_prompt: int,
    *,
    max_new_tokens: int,
    seed: int,
    temperature: float = 1.0,
    top_p: float = 0.95,
    batch_size: int = 16,
    max_length: int = 256,
    device: str = "cpu",
) -> list[dict]:
    """``{prompt, completion, sample}`` rows, ``per_prompt`` per prompt; empty completions are dropped."""
    from thumbs.eval.sampling import generate, sample_seed, stop_ids
    from thumbs.models import load_model, load_tokenizer
    from thumbs.tokenize import Encoder

    tokenizer, model = load_tokenizer(model_path), load_model(model_path)
    model.to(device).eval()
    encoder = Encoder(tokenizer, max_length)
    chat = bool(getattr(tokenizer, "chat_template", None))
    asked = [as_prompt(p, chat) for p in prompts for _ in range(per_prompt)]
    ids = [encoder.prompt_ids(p) for p in asked]
    seeds = [sample_seed(seed, i) for i in range(len(ids))]
    out = generate(
        model, tokenizer, ids, seeds,
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size,
    )  # fmt: skip
    stops = set(stop_ids(model, tokenizer))
    texts = [
        tokenizer.decode([t for t in o if t not in stops], skip_special_tokens=True).strip() for o in out
    ]
    return [
        {"prompt": p, "completion": t, "sample": i % per_prompt}
        for i, (p, t) in enumerate(zip(asked, texts))
        if t
    ]
