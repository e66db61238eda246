"""`thumbs compare`: runs side by side in one self-contained HTML report and a terminal table.

The report opens with the table someone deciding what to ship reads first, then the plots (PNG
inside the file), the data behind the runs, what differs between their configs, and sampled
completions beside the reference's. Nothing in it is fetched: no links, fonts or scripts.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import typer

from thumbs.report.runs import Run, config_differences, headline, load_runs
from thumbs.show import console as _console

TERMINAL_COLUMNS = (
    "run",
    "method",
    "win rate [95% CI]",
    "reward (Δ vs ref)",
    "KL",
    "length (ref)",
    "held-out AUC",
)


def print_table(runs: list[Run]) -> None:
    """The headline numbers in the terminal, each run's reading below the table."""
    from rich.table import Table

    rows = [headline(run) for run in runs]
    table = Table(title="thumbs compare", title_justify="left")
    for column in TERMINAL_COLUMNS:
        table.add_column(
            column, justify="left" if column in ("run", "method") else "right", no_wrap=column != "run"
        )
    for row in rows:
        table.add_row(*(row[c] for c in TERMINAL_COLUMNS))
    console = _console()
    console.print(table)
    for row in rows:
        console.print(f"  {row['run']}: {row['reading']}", markup=False, highlight=False)


def compare(run_dirs: list[str | Path], out: str | Path = "report.html", *, show: bool = False) -> Path:
    """Write the HTML report for ``run_dirs`` to ``out`` and return its path; ``show`` prints the table."""
    from thumbs.report import plots
    from thumbs.report.page import render

    runs = load_runs(run_dirs)
    figures = {
        "win": plots.win_rates(runs),
        "frontier": plots.frontier(runs),
        "curves": plots.training_curves(runs),
    }
    page = render(
        runs,
        rows=[headline(run) for run in runs],
        figures=figures,
        diffs=config_differences(runs),
        created=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    if show:
        print_table(runs)
    return out


def compare_command(
    run_dirs: list[Path] = typer.Argument(
        ..., help="Run directories to put side by side (a study folder: its cells)."
    ),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="Where to write the HTML report."),
) -> None:
    """Compare runs in one self-contained HTML report (plots inside) and a terminal table."""
    path = compare(run_dirs, out, show=True)
    typer.echo(f"wrote {path.resolve()}")
