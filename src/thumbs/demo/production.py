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
    print(
        f"\nthumbs: production scenario finished in {(time.perf_counter() - started) / 60:.1f} min. Report: {path.resolve()}"
    )
    return path
