"""`thumbs demo`: the whole job on embedded defaults, from real human feedback to a report.

1. ingest ``builtin:vader-movies`` (one vote per human rating of a movie-review snippet);
2. audit it (balance, weights, conflicts, noise);
3. train SmolLM2-135M-Instruct with LoRA: KTO on the votes, and DPO on the pairs the same votes allow;
4. evaluate both against the starting model: samples judged by VADER's lexicon (which did not make
   the labels: people did), win rate, reward, KL, length, held-out AUC;
5. write report.html and print the table.

Everything is cached: a rerun reuses the converted model, the data and finished runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from thumbs.demo.runs import FULL, QUICK, evaluate_or_reuse, run_config, stage, stage_times, train_or_reuse
from thumbs.folders import write_text


def run_demo(out: Path = Path("runs/demo"), *, quick: bool = False, model: str = "default") -> Path:
    from thumbs.audit.findings import audit
    from thumbs.audit.findings import print_summary as print_audit
    from thumbs.data.ingest import ingest
    from thumbs.data.ingest import print_summary as print_ingest
    from thumbs.report.compare import compare

    size = QUICK if quick else FULL
    out = Path(out) / ("quick" if quick else "full")
    data_dir = out.parent / "data"
    started = time.perf_counter()

    stage(1, "Ingest: real human ratings of movie-review snippets (VADER), one vote per rating")
    t0 = time.perf_counter()
    manifest = ingest(["builtin:vader-movies"], data_dir)
    print_ingest(manifest, data_dir, time.perf_counter() - t0)

    stage(2, "Audit: balance, voters, conflicts, label noise")
    report = audit(data_dir)
    write_text(data_dir / "audit.json", json.dumps(report, indent=2, default=str))
    print_audit(report, data_dir / "audit.json")

    runs = []
    for number, method, what in (
        (3, "kto", "Train KTO on the votes (LoRA on SmolLM2-135M-Instruct)"),
        (4, "dpo", "Train the DPO baseline on the pairs the same votes allow"),
    ):
        stage(number, what)
        runs.append(train_or_reuse(run_config(method, data_dir, out, size, model)))

    stage(5, "Evaluate against the starting model (judge: VADER lexicon; labels came from people)")
    for run_dir in runs:
        evaluate_or_reuse(run_dir, size)  # eval's default batch of 64: about 1.9x the samples/s of 16

    stage(6, "Report")
    path = compare(runs, out / "report.html", show=True)
    minutes = (time.perf_counter() - started) / 60
    print("\n" + stage_times())
    print(f"thumbs: demo finished in {minutes:.1f} min. Report: {path.resolve()}")
    return path
