"""`thumbs demo`: the embedded runs, by scenario."""

from __future__ import annotations

from pathlib import Path

import typer

from thumbs.errors import ThumbsError


def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for data, runs and report."),
    quick: bool = typer.Option(False, "--quick", help="A smaller run (about 4 minutes on a 2-core CPU)."),
    scenario: str = typer.Option(
        "vader", "--scenario", help="vader (real ratings) | production (simulated users)."
    ),
    model: str = typer.Option(
        "default", "--model", help="Starting model: default (SmolLM2-135M-Instruct) or a path."
    ),
    rounds: int = typer.Option(
        None,
        "--rounds",
        help="production only: that many online rounds (thumbs iterate), with and without user_balance.",
    ),
    study: bool = typer.Option(
        False, "--study", help="The embedded study: KTO and DPO at 3 β, imbalance and noise (under an hour)."
    ),
) -> None:
    """Run the whole job on embedded defaults: ingest, audit, train KTO and DPO, evaluate, report."""
    if study:
        from thumbs.study.embedded import run_embedded_study

        result = run_embedded_study(out, quick=quick, model=model)
        if result["failed"]:
            raise typer.Exit(1)
        return
    if rounds is not None and (scenario != "production" or rounds < 1):
        raise ThumbsError(
            "--rounds R (R ≥ 1) goes with --scenario production",
            hint="thumbs demo --scenario production --rounds 3",
        )
    if rounds is not None:
        from thumbs.demo.rounds import run_production_rounds

        run_production_rounds(out, rounds, quick=quick, model=model)
        return
    if scenario == "production":
        from thumbs.demo.production import run_production

        run_production(out, quick=quick, model=model)
        return
    if scenario != "vader":
        raise ThumbsError(f"unknown scenario '{scenario}'", hint="use vader or production")
    from thumbs.demo.movies import run_demo

    run_demo(out, quick=quick, model=model)
