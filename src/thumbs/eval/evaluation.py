"""`thumbs eval`: a trained policy against its starting model, on held-out prompts, under a judge.

Both models sample n completions for the same prompts with the same random stream per sample
(see thumbs.eval.sampling), so the comparison is paired. What ``eval.json`` holds:

- ``win_rate``: the share of samples where the judge scores the policy's completion above the
  reference's, ties counting half. ``win_rate_ci``: the 95% Wilson score interval on that share.
  Ties make an outcome's variance smaller than p(1-p), so with many ties the interval is wide
  on the safe side. A pairwise judge (``llm:``, ``openai:``) gives verdicts instead of scores:
  each sample asked in both orders, ``pairwise`` counts the verdicts and parse failures, and
  ``reward`` is None (see thumbs.eval.pairwise).
- ``reward``: the judge's mean score and its standard error, for the policy and the reference.
- ``reward_diff``: the paired difference policy − reference of the judge's scores, sample by
  sample (the two share prompt and random stream): mean, standard error and ``ci``, the 95%
  Student t interval (df = n − 1). It separates far sooner than the two rewards' own intervals.
- ``kl``: KL(π‖π_ref) in nats per completion, estimated from the policy's own samples as the mean
  of log π(y|x) − log π_ref(y|x) (sequence level), with its standard error.
- ``kl_tokens``: the same KL estimated per token, Σ_t KL(π(·|x,y<t) ‖ π_ref(·|x,y<t)) with both
  models' full next-token distributions along the policy's samples; mean and standard error.
  Far lower variance than ``kl`` (see thumbs.eval.divergence). Both are unbiased at
  temperature 1, top_p 1; other settings sample a tempered policy and the numbers are only
  indicative.
- ``length``: mean completion tokens (the stop token not counted); length drift is a known failure.
- ``heldout_auc``: ROC AUC of the implicit reward β·(log π(y|x) − log π_ref(y|x)) against the
  held-out thumbs labels: the chance that a random thumbs-up completion gets a higher implicit
  reward than a random thumbs-down one (ties half). 0.5 is chance.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import typer

from thumbs import show
from thumbs.data.store import write_output
from thumbs.errors import ThumbsError
from thumbs.eval.metrics import mean_stderr, paired_difference, roc_auc, win_rate
from thumbs.folders import owned

SAMPLES_KEPT = 6  # sample completions written to eval.json for the report


def _beta(config, beta: float | None) -> float:
    if beta is not None:
        return beta
    if config is None:
        return 0.1
    section = getattr(config, config.method, None)  # kto, dpo, bco, apo_zero; SFT has no β: KTO's
    return section.beta if hasattr(section, "beta") else config.kto.beta


def _score_heldout(
    models, encoder, rows: list[dict], beta: float, batch_size: int, identity: str | None
) -> dict:
    """Held-out AUC of β·log(π/π_ref); the reference's log-probs from the cache under ``identity``
    (its ``model_identity``; None: computed, not cached)."""
    import numpy as np
    import torch

    from thumbs.eval.memo import memo_key, remembered
    from thumbs.eval.sampling import sequence_logps

    pairs = [
        encoder.fit(encoder.prompt_ids(row["prompt"]), completion)
        for row, completion in zip(rows, encoder.completion_ids([r["completion"] for r in rows]))
    ]
    prompts, completions = [p for p, _ in pairs], [c for _, c in pairs]
    pad = models.tokenizer.pad_token_id
    policy_logps = sequence_logps(models.policy, prompts, completions, pad, batch_size)
    with models.reference_scope() as reference:
        how = {"pad": pad, "batch_size": batch_size, "layout": "shared prompts"}
        key = memo_key(identity, "heldout-logps", how, [prompts, completions]) if identity else None
        logps, reused = remembered(
            key,
            lambda: torch.from_numpy(sequence_logps(reference, prompts, completions, pad, batch_size)),
            lambda v: torch.is_tensor(v) and v.shape == (len(rows),) and bool(v.isfinite().all()),
        )
        reference_logps = logps.numpy()
    rewards = beta * (policy_logps - reference_logps)
    labels = np.array([bool(r["label"]) for r in rows])
    return {
        "auc": roc_auc(rewards, labels),
        "n": len(rows),
        "desirable": int(labels.sum()),
        "undesirable": int((~labels).sum()),
        "reward_desirable": float(rewards[labels].mean()) if labels.any() else None,
        "reward_undesirable": float(rewards[~labels].mean()) if (~labels).any() else None,
        "reference_reused": reused,
    }


def evaluate(
    run_dir_or_model: str | Path,
    reference: str | None = None,
    prompts: str | Path | list | None = None,
    judge: Any = "vader",
    n: int = 64,
    seed: int = 0,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 64,
    *,
    heldout: str | None = None,
    max_heldout: int = 1000,
    beta: float | None = None,
    rubric: str | Path | None = None,
    out: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
    reuse: bool = True,
) -> dict:
    """Evaluate a run (or a model folder) against its reference; write eval.json and return its dict.

    ``prompts``: a file, a list, ``"eval-split"`` or None (the run's held-out prompts). ``heldout``:
    labelled feedback for the AUC (default: the run's eval split), at most ``max_heldout`` rows.
    ``rubric``: a file replacing a pairwise judge's default rubric.
    ``out`` defaults to RUN/eval.json, or ./eval.json for a model folder. ``reuse``: take the
    reference's samples and held-out log-probs from the cache when an earlier evaluation computed
    exactly these (thumbs.eval.memo); False recomputes them.
    """
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from thumbs.eval.divergence import keep_sampling_states, kl_along_samples
    from thumbs.eval.heldout import choose_prompts, heldout_feedback, prompt_pool, prompt_text, run_feedback
    from thumbs.eval.judges import checked_scores, make_judge
    from thumbs.eval.memo import memo_key, remembered
    from thumbs.eval.policy import load_models, resolve_target
    from thumbs.eval.sampling import SAMPLER, generate, pad_id_of, sample_seed, stop_ids, stop_trimmed
    from thumbs.tokenize import Encoder
    from thumbs.train.reference import model_identity

    if n < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ThumbsError("n, max_new_tokens and batch_size must be at least 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ThumbsError("temperature must be ≥ 0 and top_p in (0, 1]")
    started = time.perf_counter()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    run_dir, config, model_path = resolve_target(run_dir_or_model)
    with owned(run_dir, "thumbs eval") if run_dir is not None else contextlib.nullcontext():
        judge = make_judge(judge, device=device, rubric=rubric)  # a bad judge fails before any model loads

        feedback, feedback_source = None, None
        if heldout is not None:
            feedback, feedback_source = heldout_feedback([heldout], whole=True), heldout
        elif config is not None:
            feedback, feedback_source = run_feedback(config)
        if feedback is not None and len(feedback) > max_heldout:
            keep = np.sort(np.random.default_rng(seed).choice(len(feedback), max_heldout, replace=False))
            feedback = [feedback[i] for i in keep]

        pool, prompt_source = prompt_pool(prompts, feedback, feedback_source, config)
        distinct, sample_prompts = choose_prompts(pool, n, seed)

        default_reference = config.model.name_or_path if config is not None else None
        models = load_models(model_path, reference, default_reference, device)
        tokenizer = models.tokenizer
        stops = stop_ids(models.policy, tokenizer)
        encoder = Encoder(tokenizer, max_length=config.data.max_length if config else 1024)
        prompt_ids = [encoder.prompt_ids(p) for p in sample_prompts]
        seeds = [sample_seed(seed, i) for i in range(n)]
        settings = dict(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size
        )

        with tqdm(
            total=2 * n, desc="sampling policy, then reference", unit="sample", disable=not progress
        ) as bar:
            kept = [] if keep_sampling_states(models.policy, n, max_new_tokens) else None
            policy_ids = generate(
                models.policy, tokenizer, prompt_ids, seeds, progress=bar, hidden_out=kept, **settings
            )
            with models.reference_scope() as ref_model:
                identity = model_identity(ref_model) if reuse else None  # read its weights once
                how = {
                    **settings,
                    "stops": sorted(stops),
                    "pad": pad_id_of(tokenizer, stops),
                    "sampler": SAMPLER,
                }
                key = (
                    memo_key(identity, "samples", how, [prompt_ids, [[s] for s in seeds]]) if reuse else None
                )
                reference_ids, samples_reused = remembered(
                    key,
                    lambda: generate(ref_model, tokenizer, prompt_ids, seeds, progress=bar, **settings),
                    lambda v: isinstance(v, list) and len(v) == n and all(isinstance(c, list) for c in v),
                )
                if samples_reused:
                    bar.update(n)
        # KL from the policy's own samples, scored under both models, per sequence and per token.
        log_ratio, token_kl = kl_along_samples(
            models.policy, models.reference_scope, prompt_ids, policy_ids, pad_id_of(tokenizer, stops), batch_size,
            policy_hidden=kept,
        )  # fmt: skip

        policy_texts = [
            tokenizer.decode(stop_trimmed(ids, stops), skip_special_tokens=True) for ids in policy_ids
        ]
        reference_texts = [
            tokenizer.decode(stop_trimmed(ids, stops), skip_special_tokens=True) for ids in reference_ids
        ]
        judge_prompts = [prompt_text(p, messages=True) for p in sample_prompts]
        if getattr(judge, "pairwise", False):  # verdicts on pairs, both orders (thumbs.eval.pairwise)
            judged, outcomes = judge.judge_pairs(judge_prompts, policy_texts, reference_texts, progress)
            policy_scores = reference_scores = None
        else:
            policy_scores = checked_scores(judge, judge_prompts, policy_texts, "policy")
            reference_scores = checked_scores(judge, judge_prompts, reference_texts, "reference")
            judged, outcomes = win_rate(policy_scores, reference_scores), None

        beta = _beta(config, beta)
        heldout_result = (
            _score_heldout(models, encoder, feedback, beta, batch_size, identity) if feedback else None
        )
        result = {
            "policy": models.policy_path,
            "reference": models.reference_path,
            "run_dir": str(run_dir) if run_dir else None,
            "method": config.method if config else None,
            "beta": beta,
            "judge": judge.name,
            "n": n,
            "prompts": {"source": prompt_source, "distinct": distinct},
            "sampling": {"seed": seed, **settings, "sampler": "inverse-cdf, one random stream per sample"},
            "reference_samples_reused": samples_reused,
            "policy_weights": models.policy_weights,
            "win_rate_interval": "95% Wilson score interval, ties counted as half a win",
            **judged,
            "reward": None
            if policy_scores is None
            else {"policy": mean_stderr(policy_scores), "reference": mean_stderr(reference_scores)},
            "reward_diff": None
            if policy_scores is None
            else paired_difference(policy_scores, reference_scores),
            "reward_diff_interval": "95% Student t interval on the paired differences policy − reference",
            "kl": mean_stderr(log_ratio),
            "kl_tokens": mean_stderr(token_kl),
            "kl_note": None
            if temperature == 1 and top_p == 1
            else "samples came from a tempered/truncated policy: the KL estimates are indicative only",
            "length": {
                "policy": float(np.mean([len(stop_trimmed(ids, stops)) for ids in policy_ids])),
                "reference": float(np.mean([len(stop_trimmed(ids, stops)) for ids in reference_ids])),
                "stopped": {
                    "policy": float(np.mean([bool(ids) and ids[-1] in stops for ids in policy_ids])),
                    "reference": float(np.mean([bool(ids) and ids[-1] in stops for ids in reference_ids])),
                },
            },
            "heldout_auc": heldout_result["auc"] if heldout_result else None,
            "heldout": {**heldout_result, "source": feedback_source} if heldout_result else None,
            "samples": [
                {
                    "prompt": prompt_text(sample_prompts[i]),
                    "policy": policy_texts[i],
                    "reference": reference_texts[i],
                    **(
                        {"policy_score": policy_scores[i], "reference_score": reference_scores[i]}
                        if outcomes is None
                        else {"outcome": outcomes[i]}  # the policy's: 1 won both orders, None unparsed
                    ),
                }
                for i in range(min(SAMPLES_KEPT, n))
            ],
            "device": device,
            "seconds": round(time.perf_counter() - started, 2),
        }
        out = Path(out) if out else (run_dir / "eval.json" if run_dir else Path("eval.json"))
        write_output(out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        result["path"] = str(out)
        if run_dir is not None:  # the run's model card and experiment trackers get the numbers too
            from thumbs.train.card import update_card
            from thumbs.train.trackers import log_eval

            update_card(run_dir, result)
            log_eval(run_dir, result)
        return result


def eval_command(
    target: str = typer.Argument(..., help="A run directory (config.yaml + final/) or a model folder."),
    reference: str | None = typer.Option(None, help="Reference model (default: the run's starting model)."),
    prompts: str | None = typer.Option(
        None, help="FILE (text, one prompt per line, or JSONL with 'prompt') or eval-split (default)."
    ),
    judge: str = typer.Option(
        "vader", help="vader | hf:PATH | python:MODULE:FUNCTION | llm:PATH_OR_ID | openai:URL[#MODEL]"
    ),
    rubric: Path | None = typer.Option(
        None, help="Pairwise judges: the rubric, a file with {prompt}, {response_a} and {response_b}."
    ),
    n: int = typer.Option(64, help="Samples per model."),
    seed: int = typer.Option(0, help="Sampling seed; sample i of both models shares a stream."),
    max_new_tokens: int = typer.Option(64, help="Longest completion, in tokens."),
    temperature: float = typer.Option(1.0, help="1.0 keeps the KL estimate unbiased; 0 is greedy."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling; 1.0 keeps the KL estimate unbiased."),
    batch_size: int = typer.Option(
        64, help="Samples decoded together (larger batches sample faster per sample, on a CPU too)."
    ),
    heldout: str | None = typer.Option(
        None, help="Labelled feedback for the AUC (default: the run's eval split)."
    ),
    max_heldout: int = typer.Option(
        1000, help="At most this many held-out votes for the AUC (a seeded sample)."
    ),
    out: Path | None = typer.Option(None, help="Where to write eval.json (default: in the run directory)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    against: str | None = typer.Option(
        None, help="Another run: TARGET's policy against its policy, head to head (writes versus-NAME.json)."
    ),
    recompute: bool = typer.Option(
        False, help="Recompute the reference's samples and held-out log-probs instead of reusing cached ones."
    ),
) -> None:
    """Sample policy and reference on held-out prompts, judge both, and write eval.json."""
    if against is not None:
        from thumbs.eval.versus import head_to_head, print_versus

        if reference is not None or heldout is not None:
            raise ThumbsError("--reference and --heldout do not apply with --against (two policies, no AUC)")
        versus = head_to_head(
            target, against, prompts=prompts, judge=judge, rubric=rubric, n=n, seed=seed,
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size,
            out=out, device=device,
        )  # fmt: skip
        print_versus(versus)
        return
    result = evaluate(
        target,
        reference=reference,
        prompts=prompts,
        judge=judge,
        n=n,
        seed=seed,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        batch_size=batch_size,
        heldout=heldout,
        rubric=rubric,
        max_heldout=max_heldout,
        out=out,
        device=device,
        reuse=not recompute,
    )

    print_eval(result)


def print_eval(result: dict) -> None:
    """eval.json as a terminal table: the policy beside the reference."""
    from rich.table import Table

    low, high = result["win_rate_ci"]
    reward = result["reward"]
    table = Table(title=f"thumbs eval · judge {result['judge']} · n={result['n']}", title_justify="left")
    for column, justify in (("", "left"), ("policy", "right"), ("reference", "right")):
        table.add_column(column, justify=justify)
    table.add_row("win rate [95% CI]", f"{result['win_rate']:.3f} [{low:.3f}, {high:.3f}]", "")
    if reward is not None:
        table.add_row(
            "judge reward ± se",
            f"{reward['policy']['mean']:.3f} ± {show.fmt(reward['policy']['stderr'])}",
            f"{reward['reference']['mean']:.3f} ± {show.fmt(reward['reference']['stderr'])}",
        )
    if result.get("pairwise"):
        pairs = result["pairwise"]
        table.add_row("pairs scored (both orders)", f"{pairs['scored']} of {result['n']}", "")
        table.add_row("unparsed replies", f"{pairs['parse_failures']} of {pairs['replies']}", "")
    diff = result.get("reward_diff")
    if diff and diff["mean"] is not None:
        ci = "" if diff["ci"][0] is None else f" [{diff['ci'][0]:.3f}, {diff['ci'][1]:.3f}]"
        table.add_row("reward − reference [95% CI]", f"{diff['mean']:.3f}{ci}", "")
    table.add_row(
        "KL(policy ‖ reference)", f"{result['kl']['mean']:.4g} ± {show.fmt(result['kl']['stderr'])}", "0"
    )
    if result.get("kl_tokens"):
        kl = result["kl_tokens"]
        table.add_row("KL per token, summed", f"{kl['mean']:.4g} ± {show.fmt(kl['stderr'])}", "0")
    table.add_row(
        "length (tokens)", f"{result['length']['policy']:.1f}", f"{result['length']['reference']:.1f}"
    )
    heldout = result.get("heldout")
    auc = (
        f"{heldout['auc']:.3f} on {heldout['n']} held-out votes"
        if heldout and heldout["auc"] is not None
        else "–"
    )
    table.add_row("held-out AUC", auc, "0.5")
    console = show.console()
    console.print(table)
    if result.get("path"):
        console.print(f"wrote {result['path']} ({result['seconds']:.0f} s)")
