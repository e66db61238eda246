"""Head to head: two trained policies on the same prompts and random streams, under one judge.

``thumbs eval RUN_A --against RUN_B`` (or ``head_to_head``) samples both policies as ``thumbs
eval`` samples a policy and its reference: the same n prompts (RUN_A's eval prompts unless
given) and the same random stream for sample i of both, so the comparison is paired. What the
result (``RUN_A/versus-<RUN_B>.json``) holds:

- ``win_rate``: the share of samples where the judge prefers A's completion to B's, ties half;
  ``win_rate_ci`` its 95% Wilson interval; ``wins``/``ties``/``losses`` counted for A.
  A pairwise judge (``llm:``, ``openai:``) gives these from verdicts asked in both orders.
- ``reward``: each policy's mean judge score with its standard error; ``reward_diff``: the
  paired difference A − B, its standard error and 95% Student t interval (None for a pairwise judge).
- ``length``: mean completion tokens of each; ``kl_tokens``: each run's token-level KL to its own
  reference, read from its ``eval.json`` when there is one (it is what "at matched KL" refers to).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from thumbs import show
from thumbs.errors import ThumbsError
from thumbs.eval.metrics import mean_stderr, paired_difference, win_rate

SAMPLES_KEPT = 6


def _eval_kl(run_dir: Path | None) -> dict | None:
    path = run_dir / "eval.json" if run_dir else None
    if path is None or not path.exists():
        return None
    try:
        return json.loads(path.read_text()).get("kl_tokens")
    except (OSError, ValueError):
        return None


SETTINGS = ("n", "seed", "max_new_tokens", "temperature", "top_p")


def saved_versus(path: Path, judge: str, **settings: Any) -> dict | None:
    """The head-to-head saved at ``path`` when it was made under ``judge`` with these ``settings``
    (any of ``SETTINGS``); None when there is none, it does not parse, or it was made otherwise."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("judge") != judge:
        return None
    made = {"n": saved.get("n"), **(saved.get("sampling") or {})}
    return saved if all(made.get(k) == v for k, v in settings.items()) else None


def head_to_head(
    run_a: str | Path,
    run_b: str | Path,
    *,
    prompts: str | Path | list | None = None,
    judge: Any = "vader",
    rubric: str | Path | None = None,
    n: int = 64,
    seed: int = 0,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 64,
    out: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Policy A against policy B on the same prompts and streams; write the result and return it.

    A's run folder (where the result goes) is owned for the duration, as ``thumbs eval`` owns it:
    a run still training there, or another command writing there, is refused at once.
    """
    options = {k: v for k, v in locals().items() if k not in ("run_a", "run_b")}  # the keywords, as given
    import contextlib

    from thumbs.eval.policy import resolve_target
    from thumbs.folders import owned

    run_dir = resolve_target(run_a)[0]
    with owned(run_dir, "thumbs eval --against") if run_dir is not None else contextlib.nullcontext():
        return _head_to_head(run_a, run_b, **options)


def _head_to_head(run_a, run_b, *, prompts, judge, rubric, n, seed, max_new_tokens, temperature, top_p,
                  batch_size, out, device, progress) -> dict:  # fmt: skip
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from thumbs.data.store import write_output
    from thumbs.eval.heldout import choose_prompts, prompt_pool, prompt_text, run_feedback
    from thumbs.eval.judges import checked_scores, make_judge
    from thumbs.eval.policy import load_policy, resolve_target
    from thumbs.eval.sampling import generate, sample_seed, stop_ids, stop_trimmed
    from thumbs.tokenize import Encoder

    if n < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ThumbsError("n, max_new_tokens and batch_size must be at least 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ThumbsError("temperature must be ≥ 0 and top_p in (0, 1]")
    started = time.perf_counter()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    targets = [resolve_target(run) for run in (run_a, run_b)]
    judge = make_judge(judge, device=device, rubric=rubric)  # a bad judge fails before any model loads

    run_dir, config, _ = targets[0]
    feedback, feedback_source = run_feedback(config) if config is not None else (None, None)
    pool, prompt_source = prompt_pool(prompts, feedback, feedback_source, config)
    distinct, sample_prompts = choose_prompts(pool, n, seed)
    seeds = [sample_seed(seed, i) for i in range(n)]
    settings = dict(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size
    )

    texts, lengths = [], []
    with tqdm(total=2 * n, desc="sampling A, then B", unit="sample", disable=not progress) as bar:
        for _, target_config, model_path in targets:
            start = target_config.model.name_or_path if target_config is not None else None
            policy, tokenizer = load_policy(model_path, start, device)
            stops = stop_ids(policy, tokenizer)
            encoder = Encoder(tokenizer, max_length=target_config.data.max_length if target_config else 1024)
            prompt_ids = [encoder.prompt_ids(p) for p in sample_prompts]
            ids = generate(policy, tokenizer, prompt_ids, seeds, progress=bar, **settings)
            trimmed = [stop_trimmed(c, stops) for c in ids]
            texts.append([tokenizer.decode(c, skip_special_tokens=True) for c in trimmed])
            lengths.append(float(np.mean([len(c) for c in trimmed])))
            del policy  # one policy in memory at a time

    judge_prompts = [prompt_text(p, messages=True) for p in sample_prompts]
    if getattr(judge, "pairwise", False):
        judged, _ = judge.judge_pairs(judge_prompts, texts[0], texts[1])
        scores = None
    else:
        scores = [checked_scores(judge, judge_prompts, t, side) for t, side in zip(texts, ("a", "b"))]
        judged = win_rate(*scores)

    names = [str(Path(run)) for run in (run_a, run_b)]
    result = {
        "a": names[0],
        "b": names[1],
        "judge": judge.name,
        "n": n,
        "prompts": {"source": prompt_source, "distinct": distinct},
        "sampling": {"seed": seed, **settings, "sampler": "inverse-cdf, one random stream per sample"},
        **judged,
        "win_rate_interval": "95% Wilson score interval, ties counted as half a win (A over B)",
        "reward": None if scores is None else {"a": mean_stderr(scores[0]), "b": mean_stderr(scores[1])},
        "reward_diff": None if scores is None else paired_difference(scores[0], scores[1]),
        "reward_diff_interval": "95% Student t interval on the paired differences A − B",
        "length": {"a": lengths[0], "b": lengths[1]},
        "kl_tokens": {"a": _eval_kl(targets[0][0]), "b": _eval_kl(targets[1][0])},
        "samples": [
            {"prompt": prompt_text(sample_prompts[i]), "a": texts[0][i], "b": texts[1][i]}
            | ({"a_score": scores[0][i], "b_score": scores[1][i]} if scores else {})
            for i in range(min(SAMPLES_KEPT, n))
        ],
        "device": device,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if out is None:
        out = (run_dir or Path(".")) / f"versus-{Path(run_b).resolve().name}.json"
    out = Path(out)
    write_output(out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    result["path"] = str(out)
    return result


def print_versus(result: dict) -> None:
    """A head-to-head result as a terminal table: A beside B."""
    from rich.table import Table

    low, high = result["win_rate_ci"]
    table = Table(title=f"thumbs eval · A against B · judge {result['judge']} · n={result['n']}",
                  title_justify="left")  # fmt: skip
    for column, justify in (("", "left"), ("A", "right"), ("B", "right")):
        table.add_column(column, justify=justify)
    table.add_row("run", result["a"], result["b"])
    table.add_row("A's win rate [95% CI]", f"{result['win_rate']:.3f} [{low:.3f}, {high:.3f}]", "")
    if result.get("reward"):
        reward = result["reward"]
        table.add_row(
            "judge reward ± se",
            f"{reward['a']['mean']:.3f} ± {show.fmt(reward['a']['stderr'])}",
            f"{reward['b']['mean']:.3f} ± {show.fmt(reward['b']['stderr'])}",
        )
    diff = result.get("reward_diff")
    if diff and diff["mean"] is not None:
        ci = "" if diff["ci"][0] is None else f" [{diff['ci'][0]:.3f}, {diff['ci'][1]:.3f}]"
        table.add_row("reward A − B [95% CI]", f"{diff['mean']:.3f}{ci}", "")
    kl = result.get("kl_tokens") or {}
    table.add_row(
        "KL to own reference (eval.json)",
        *(f"{kl[k]['mean']:.4g}" if kl.get(k) else "–" for k in ("a", "b")),
    )
    table.add_row("length (tokens)", f"{result['length']['a']:.1f}", f"{result['length']['b']:.1f}")
    console = show.console()
    console.print(table)
    if result.get("path"):
        console.print(f"wrote {result['path']} ({result['seconds']:.0f} s)")
