"""What evaluating against the same reference would recompute, kept on disk: its samples and its
held-out log-probs.

Evaluations of several runs from one base model (the demo's two runs, a study's cells, the rounds of
an online loop measured against the original) sample that reference on the same prompts with the
same random streams, and score it on the same held-out votes. Those numbers are a function of the
reference's weights, the token ids, the settings and the software, and nothing else, so they are
computed once and kept in ``$THUMBS_CACHE/eval`` under a hash of all of those. Any difference in
any of them (another model or a bit of its weights, another prompt, another batch size — prompts
of different lengths are padded to their batch's longest, which can move a rounding — another
device, dtype, library version or sampler: ``thumbs.eval.sampling.SAMPLER``) is another key: a
miss, never a stale hit. A file that does not load or does not fit what was asked is recomputed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import torch

from thumbs.paths import cache_dir
from thumbs.train.reference import load_cached, save_atomic


def memo_key(identity: str, kind: str, settings: dict, token_lists: list[list[list[int]]]) -> str:
    """Hash of the reference (its ``model_identity``), ``kind``, ``settings`` and every token list."""
    import transformers

    digest = hashlib.blake2b(digest_size=16)
    digest.update(
        json.dumps([identity, kind, settings, transformers.__version__], sort_keys=True, default=str).encode()
    )
    for lists in token_lists:
        digest.update(f"|{len(lists)}".encode())
        for ids in lists:
            digest.update(torch.tensor(list(ids) + [-1], dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()


def remembered(key: str | None, compute: Callable[[], Any], fits: Callable[[Any], bool]) -> tuple[Any, bool]:
    """(value, reused): the cached value under ``key`` when it ``fits``, else ``compute()``, stored.
    ``key`` None: computed and not stored."""
    if key is None:
        return compute(), False
    path = cache_dir("eval") / f"{key}.pt"
    stored = load_cached(path)
    if stored is not None and stored.get("key") == key and fits(stored.get("value")):
        return stored["value"], True
    value = compute()
    save_atomic({"key": key, "value": value}, path)
    return value, False
