"""`thumbs demo --scenario production`: feedback on the model's own answers, from users whose
preferences are known, so that what each audit remedy changes is measured against the truth.

The starting model answers a set of prompts. A simulated population votes on the answers:
ordinary users judge by the ground-truth judge (VADER's compound score) with noise and a strict
bar, so thumbs-down is the majority; a small group of heavy downvoters sees many answers and
votes most of them down whatever they say. The votes go through the real pipeline (ingest,
audit), then KTO trains three ways: as logged; with the paper's class weights (``auto``); and with
class weights plus ``user_balance: inverse``. Each run is evaluated against the starting model by
the ground-truth judge on held-out prompts.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from thumbs.folders import write_text
from thumbs.iterate.answers import answer
from thumbs.iterate.population import Population, simulate_votes

TOPICS = [
    "a science-fiction film", "a romantic comedy", "a documentary about oceans", "an animated family film",
    "a war drama", "a horror film", "a musical", "a detective thriller", "a superhero film", "a silent classic",
    "a heist film", "a biopic of a painter", "a sports drama", "a western", "a space opera", "a coming-of-age story",
    "a courtroom drama", "a nature documentary", "a zombie comedy", "a historical epic", "a spy thriller",
    "a disaster film", "a road movie", "a fantasy adventure",
]  # fmt: skip


def remedy_versus(run_a: Path, run_b: Path, size) -> str:
    """``run_a`` against ``run_b`` head to head under VADER (reused when saved with the same
    settings), read by ``versus_reading`` with each run's KL as the head-to-head read it."""
    from thumbs.eval.versus import head_to_head, saved_versus

    path = run_a / f"versus-{run_b.name}.json"
    settings = dict(n=size.eval_n, max_new_tokens=size.max_new_tokens)
    result = saved_versus(path, "vader", **settings)
    if result is None:
        print(f"thumbs: {run_a.name} against {run_b.name}")
        result = head_to_head(run_a, run_b, judge="vader", out=path, **settings)
    kl = result.get("kl_tokens") or {}
    return versus_reading(run_a.name, run_b.name, result, kl.get("a"), kl.get("b"))


def versus_reading(name_a: str, name_b: str, result: dict, kl_a: dict | None, kl_b: dict | None) -> str:
    """One sentence from a head-to-head and both runs' KL (mean, stderr) to their common start.

    A reward difference whose paired 95% interval clears 0 ranks the two only where it does not
    come with more KL: at KL that cannot be told apart (95%), or with less KL — then the one ahead
    dominates (better at any price of KL). More reward bought with more KL is a trade, not a win.
    Otherwise: cannot tell apart at this n, with the n that would probably tell."""
    from thumbs.eval.metrics import Z95
    from thumbs.study.verdict import samples_needed

    n, diff = result["n"], result.get("reward_diff") or {}
    low, high = diff.get("ci") or (None, None)
    if low is None or not kl_a or not kl_b:
        rate_low, rate_high = result["win_rate_ci"]
        return (f"{name_a} against {name_b}: win rate {result['win_rate']:.2f} [{rate_low:.2f}, {rate_high:.2f}] "
                f"(n={n}); no paired reward difference or KL to read it by")  # fmt: skip
    (ka, sa), (kb, sb) = ((k["mean"], k.get("stderr") or 0.0) for k in (kl_a, kl_b))
    kl_apart = abs(ka - kb) > Z95 * math.hypot(sa, sb)
    both = f"{name_a} {ka:.3g} ± {sa:.2g}, {name_b} {kb:.3g} ± {sb:.2g}"
    kl_text = f"KL: {both}"
    delta = f"reward {name_a} − {name_b} {diff['mean']:+.3f} [{low:+.3f}, {high:+.3f}], paired 95%"
    ranked = f"n={n}; {delta}; {kl_text}"
    if low > 0 or high < 0:
        ahead, behind = (name_a, name_b) if low > 0 else (name_b, name_a)
        ahead_kl = ka if low > 0 else kb
        behind_kl = kb if low > 0 else ka
        if not kl_apart:
            return f"{ahead} ahead of {behind} at KL that cannot be told apart ({ranked})"
        if ahead_kl < behind_kl:
            return f"{ahead} dominates {behind}: more reward at less KL ({ranked})"
        return f"{ahead} has more reward than {behind} but at more KL: a trade, not ranked ({ranked})"
    needed = samples_needed(n, diff["mean"], diff.get("stderr") or 0.0, Z95)
    more = f"; about {needed:,} samples per model would probably tell" if needed and needed > n else ""
    kl_note = f"; {name_a} at {'lower' if ka < kb else 'higher'} KL ({both})" if kl_apart else f"; {kl_text}"
    return f"{name_a} and {name_b} cannot be told apart at n={n}: {delta}{kl_note}{more}"


def run_production(out: Path = Path("runs/demo"), *, quick: bool = False, model: str = "default") -> Path:
    from thumbs.audit.findings import audit
    from thumbs.audit.findings import print_summary as print_audit
    from thumbs.data.ingest import ingest
    from thumbs.data.ingest import print_summary as print_ingest
    from thumbs.demo.runs import FULL, QUICK, evaluate_or_reuse, run_config, stage, train_or_reuse
    from thumbs.eval.judges import VaderJudge
    from thumbs.models import resolve_model
    from thumbs.report.compare import compare

    size = QUICK if quick else FULL
    out = Path(out) / ("production-quick" if quick else "production")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model_path = resolve_model(model)
    prompts = [f"Write a one-sentence review of {topic}." for topic in TOPICS]

    stage(1, "The starting model answers the prompts")
    log = out / "feedback.jsonl"
    if not log.exists():
        answers = answer(
            model_path, prompts, per_prompt=4 if quick else 8, max_new_tokens=size.max_new_tokens, seed=0
        )
        scores = VaderJudge().score([a["prompt"] for a in answers], [a["completion"] for a in answers])
        votes = simulate_votes(answers, scores, Population(), seed=0)
        log.write_text("".join(json.dumps(v, ensure_ascii=False) + "\n" for v in votes))
        truth = {"answers": len(answers), "votes": len(votes), "mean_true_score": float(np.mean(scores))}
        (out / "truth.json").write_text(json.dumps(truth, indent=2))
    print(f"thumbs: simulated feedback in {log}")

    stage(2, "Ingest and audit the votes")
    data_dir = out / "data"
    manifest = ingest([str(log)], data_dir, eval_fraction=0.25)
    print_ingest(manifest, data_dir, 0.0)
    report = audit(data_dir)
    write_text(data_dir / "audit.json", json.dumps(report, indent=2, default=str))
    print_audit(report, data_dir / "audit.json")

    variants = {
        "as-logged": {"kto.undesirable_weight": 1.0, "kto.desirable_weight": 1.0},
        "class-weights": {"kto.desirable_weight": "auto"},
        "class-weights+user-balance": {"kto.desirable_weight": "auto", "data.user_balance": "inverse"},
    }
    runs = []
    for number, (name, sets) in enumerate(variants.items(), start=3):
        stage(number, f"Train KTO: {name}")
        extra = {"output_dir": str(out / name), "data.limit": None, **sets}
        runs.append(train_or_reuse(run_config("kto", data_dir, out, size, model, extra)))

    stage(6, "Evaluate against the starting model with the ground-truth judge")
    for run_dir in runs:
        evaluate_or_reuse(run_dir, size)
    path = compare(runs, out / "report.html", show=True)

    stage(7, "Each remedy against the run as logged, head to head (same prompts and random streams)")
    readings = [remedy_versus(run_dir, runs[0], size) for run_dir in runs[1:]]
    for text in readings:
        print(f"  {text}")
    write_text(out / "versus.txt", "\n".join(readings) + "\n")
    print(
        f"\nthumbs: production scenario finished in {(time.perf_counter() - started) / 60:.1f} min. Report: {path.resolve()}"
    )
    return path
