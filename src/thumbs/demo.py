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
from dataclasses import dataclass
from pathlib import Path

import typer

from thumbs.config import load_config


@dataclass(frozen=True)
class Size:
    examples: int  # votes sampled for training (seeded)
    kto_steps: int
    dpo_steps: int
    eval_n: int  # sampled completions per model
    heldout: int  # held-out votes scored for the AUC
    max_new_tokens: int


FULL = Size(examples=320, kto_steps=40, dpo_steps=25, eval_n=48, heldout=200, max_new_tokens=48)
QUICK = Size(examples=160, kto_steps=12, dpo_steps=8, eval_n=16, heldout=100, max_new_tokens=32)


def _stage(number: int, text: str) -> None:
    print(f"\n━━ {number}. {text} " + "━" * max(0, 70 - len(text)), flush=True)


def run_config(method: str, data_dir: Path, out: Path, size: Size, model: str, extra: dict | None = None):
    """The demo's training config: LoRA on the default model, CPU-sized; ``extra``: more dotted keys."""
    overrides = {
        "method": method,
        "output_dir": str(out / method),
        "model.name_or_path": model,
        "model.lora.r": 16,
        "model.lora.alpha": 32,
        "data.train": str(data_dir),
        "data.max_length": 128,
        "data.limit": size.examples,
        "train.seed": 0,
        "train.learning_rate": 5e-4,
        "train.warmup_ratio": 0.1,
        "train.log_every": 2,
    }
    if method == "kto":
        overrides |= {
            "kto.undesirable_weight": "auto",
            "train.batch_size": 8,
            "train.max_steps": size.kto_steps,
        }
    else:  # each pair is two sequences: half the pairs per step keeps the work per step alike
        overrides |= {"dpo.pairing": "matched", "train.batch_size": 4, "train.max_steps": size.dpo_steps}
    overrides |= extra or {}
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])


def train_or_reuse(cfg) -> Path:
    """Train, or resume from a checkpoint, unless the run folder holds a finished run already."""
    from thumbs.train import train

    run_dir = Path(cfg.output_dir)
    if (run_dir / "final").exists():
        print(f"thumbs: reusing the finished run in {run_dir}")
    else:
        train(cfg, resume=(run_dir / "checkpoints").exists())
    return run_dir


def evaluate_or_reuse(run_dir: Path, size: Size, **kwargs) -> None:
    """Evaluate a run against its start with the VADER judge, unless its eval.json exists already."""
    from thumbs.eval import evaluate

    if (run_dir / "eval.json").exists():
        print(f"thumbs: reusing {run_dir / 'eval.json'}")
        return
    print(f"thumbs: evaluating {run_dir.name}")
    evaluate(
        run_dir, judge="vader", n=size.eval_n, max_new_tokens=size.max_new_tokens, max_heldout=size.heldout,
        **kwargs,
    )  # fmt: skip


def run_demo(out: Path = Path("runs/demo"), *, quick: bool = False, model: str = "default") -> Path:
    from thumbs.data.audit import audit
    from thumbs.data.audit import print_summary as print_audit
    from thumbs.data.ingest import ingest
    from thumbs.data.ingest import print_summary as print_ingest
    from thumbs.report import compare

    size = QUICK if quick else FULL
    out = Path(out) / ("quick" if quick else "full")
    data_dir = out.parent / "data"
    started = time.perf_counter()

    _stage(1, "Ingest: real human ratings of movie-review snippets (VADER), one vote per rating")
    t0 = time.perf_counter()
    manifest = ingest(["builtin:vader-movies"], data_dir)
    print_ingest(manifest, data_dir, time.perf_counter() - t0)

    _stage(2, "Audit: balance, voters, conflicts, label noise")
    report = audit(data_dir)
    (data_dir / "audit.json").write_text(json.dumps(report, indent=2, default=str))
    print_audit(report, data_dir / "audit.json")

    runs = []
    for number, method, what in (
        (3, "kto", "Train KTO on the votes (LoRA on SmolLM2-135M-Instruct)"),
        (4, "dpo", "Train the DPO baseline on the pairs the same votes allow"),
    ):
        _stage(number, what)
        runs.append(train_or_reuse(run_config(method, data_dir, out, size, model)))

    _stage(5, "Evaluate against the starting model (judge: VADER lexicon; labels came from people)")
    for run_dir in runs:
        evaluate_or_reuse(run_dir, size, batch_size=16)

    _stage(6, "Report")
    path = compare(runs, out / "report.html", show=True)
    minutes = (time.perf_counter() - started) / 60
    print(f"\nthumbs: demo finished in {minutes:.1f} min. Report: {path.resolve()}")
    return path


def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for data, runs and report."),
    quick: bool = typer.Option(False, "--quick", help="A smaller run (about 4 minutes on a 2-core CPU)."),
    scenario: str = typer.Option(
        "vader", "--scenario", help="vader (real ratings) | production (simulated users)."
    ),
    model: str = typer.Option(
        "default", "--model", help="Starting model: default (SmolLM2-135M-Instruct) or a path."
    ),
) -> None:
    """Run the whole job on embedded defaults: ingest, audit, train KTO and DPO, evaluate, report."""
    if scenario == "production":
        from thumbs.scenario import run_production

        run_production(out, quick=quick, model=model)
        return
    if scenario != "vader":
        from thumbs.errors import ThumbsError

        raise ThumbsError(f"unknown scenario '{scenario}'", hint="use vader or production")
    run_demo(out, quick=quick, model=model)
