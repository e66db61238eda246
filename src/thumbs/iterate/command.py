"""`thumbs iterate CONFIG.yaml --rounds R --prompts FILE [--feedback judge|population|log] -o DIR`."""

from __future__ import annotations

from pathlib import Path

import typer


def iterate_command(
    config: Path = typer.Argument(
        ...,
        help="A training config (see examples/iterate-tiny.yaml); its optional "
        "'iterate:' section holds the defaults of the options below.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the rounds and iterate.json (resumable)."),
    rounds: int = typer.Option(None, "--rounds", help="Rounds to run (a finished round is reused)."),
    prompts: str = typer.Option(
        None, "--prompts", help="Prompts the policy answers: text (one per line) or JSONL."
    ),
    feedback: str = typer.Option(None, "--feedback", help="judge | population | log"),
    feedback_file: Path = typer.Option(
        None, "--feedback-file", help="--feedback log: the votes on the waiting round's answers."
    ),
    judge: str = typer.Option(
        None, "--judge", help="vader | hf:PATH | python:MODULE:FUNCTION (feedback judge)."
    ),
    threshold: str = typer.Option(
        None, "--threshold", help="Judge → thumbs: a number, median, or quantile:Q."
    ),
    samples: int = typer.Option(None, "--samples", help="Answers per prompt per round."),
    reference: str = typer.Option(
        None, "--reference", help="start (default) | original: KTO's reference per round."
    ),
    eval_judge: str = typer.Option(None, "--eval-judge", help="Judge for evaluation (default: --judge)."),
    eval_n: int = typer.Option(None, "--eval-n", help="Evaluation samples per model."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a training config key: --set train.max_steps=10"
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
) -> None:
    """Rounds of: the policy answers, feedback on its answers, ingest, audit, train, evaluate."""
    import yaml

    from thumbs.iterate.page import print_trajectory
    from thumbs.iterate.rounds import iterate
    from thumbs.iterate.settings import load

    options = {
        "rounds": rounds, "prompts": prompts, "feedback": feedback, "judge": judge,
        "threshold": None if threshold is None else yaml.safe_load(threshold), "samples_per_prompt": samples,
        "reference": reference, "eval_judge": eval_judge, "eval_n": eval_n,
    }  # fmt: skip
    cfg, settings = load(config, list(set_), options)
    try:
        state = iterate(cfg, settings, out, feedback_file=feedback_file, device=device)
    except KeyboardInterrupt:
        print("\nthumbs: interrupted; run the same command again to resume where it stopped")
        raise typer.Exit(130) from None
    if state["rounds"]:
        print_trajectory(state)
    if state.get("report"):
        print(f"thumbs: {out / 'iterate.json'}; report {state['report']}")
