"""`thumbs compare`: runs side by side in one self-contained HTML report and a terminal table.

A run directory holds ``config.yaml``, ``metrics.jsonl``, ``final/`` and, once evaluated,
``eval.json``; each part is optional here, so a run still training or never evaluated shows what
it has. The report opens with the table someone deciding what to ship reads first, then the
plots (PNG inside the file), the data behind the runs, what differs between their configs, and
sampled completions beside the reference's. Nothing in it is fetched: no links, fonts or scripts.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from thumbs.errors import ThumbsError

DATA_FILES = ("data_summary.json", "audit.json", "manifest.json")
LENGTH_DRIFT = 0.2  # flag a policy whose completions are 20% longer or shorter than the reference's


@dataclass
class Run:
    name: str
    path: Path
    config: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    eval: dict | None = None
    data: dict[str, dict] = field(default_factory=dict)  # file path -> its JSON


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _data_dirs(path: Path, config: dict) -> list[Path]:
    """Where data summaries may be: the run, its parent, and the folders of its data sources."""
    dirs = [path, path.parent]
    data = config.get("data") or {}
    sources = data.get("train") or []
    sources = ([sources] if isinstance(sources, str) else list(sources)) + [data.get("eval")]
    for source in sources:
        if not isinstance(source, str) or source.startswith("builtin:"):
            continue
        for candidate in (Path(source), path.parent / source):
            if candidate.exists():
                dirs.append(candidate if candidate.is_dir() else candidate.parent)
    return dirs


def load_run(path: str | Path, name: str | None = None) -> Run:
    import yaml

    path = Path(path)
    if not path.is_dir():
        raise ThumbsError(
            "run directory not found", file=str(path), hint="give run folders written by `thumbs train`"
        )
    if not any((path / f).exists() for f in ("config.yaml", "metrics.jsonl", "eval.json")):
        raise ThumbsError(
            "not a run directory (no config.yaml, metrics.jsonl or eval.json)",
            file=str(path),
            hint="give run folders written by `thumbs train`",
        )
    run = Run(name or path.name, path)
    if (path / "config.yaml").exists():
        try:
            run.config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except yaml.YAMLError:
            run.config = {}
    if (path / "metrics.jsonl").exists():
        for line in (path / "metrics.jsonl").read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if isinstance(record, dict):
                run.metrics.append(record)
    run.eval = _read_json(path / "eval.json")
    for folder in _data_dirs(path, run.config):
        for filename in DATA_FILES:
            file = (folder / filename).resolve()
            if str(file) not in run.data and file.exists() and (value := _read_json(file)) is not None:
                run.data[str(file)] = value
    return run


def load_runs(run_dirs: list[str | Path]) -> list[Run]:
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise ThumbsError("no run directories given", hint="thumbs compare RUN_DIR [RUN_DIR ...]")
    names = [p.resolve().name for p in paths]
    # Same folder name in two places: tell them apart by their parent.
    names = [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]
    return [load_run(p, n) for p, n in zip(paths, names)]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; lists stay whole (shown as JSON)."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_differences(runs: list[Run]) -> dict[str, list]:
    """Dotted config keys whose values differ between runs (output_dir always does; left out)."""
    flat = [flatten(run.config) for run in runs]
    keys = sorted({k for f in flat for k in f} - {"output_dir"})
    missing = object()
    diffs = {}
    for key in keys:
        values = [f.get(key, missing) for f in flat]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values if v is not missing}) > 1 or (
            missing in values and len(runs) > 1
        ):
            diffs[key] = [None if v is missing else v for v in values]
    return diffs


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def headline(run: Run) -> dict[str, str]:
    """The numbers a ship decision starts from, formatted; shared by the HTML and terminal tables."""
    config, ev = run.config, run.eval or {}
    method = config.get("method", "?")
    lora = (config.get("model") or {}).get("lora") or {}
    beta = (config.get(method) or {}).get("beta") if method in ("kto", "dpo") else None
    last = run.metrics[-1] if run.metrics else {}
    row = {
        "run": run.name,
        "method": f"{method}" + (f" β={beta:g}" if isinstance(beta, (int, float)) else ""),
        "model": "LoRA" if lora.get("enabled") else "full",
        "steps": fmt(last.get("step")),
        "final loss": fmt(last.get("loss")),
    }
    if not ev:
        row.update(
            {k: "–" for k in ("win rate [95% CI]", "reward (Δ vs ref)", "KL", "length (ref)", "held-out AUC")}
        )
        row["reading"] = f"not evaluated: run `thumbs eval {run.path}`"
        return row
    low, high = ev["win_rate_ci"]
    policy, reference = ev["reward"]["policy"]["mean"], ev["reward"]["reference"]["mean"]
    length, ref_length = ev["length"]["policy"], ev["length"]["reference"]
    row.update(
        {
            "win rate [95% CI]": f"{ev['win_rate']:.2f} [{low:.2f}, {high:.2f}]",
            "reward (Δ vs ref)": f"{policy:.3f} ({policy - reference:+.3f})",
            "KL": f"{ev['kl']['mean']:.3g}",
            "length (ref)": f"{length:.1f} ({ref_length:.1f})",
            "held-out AUC": fmt(ev.get("heldout_auc")),
        }
    )
    reading = []
    if low > 0.5:
        reading.append(f"judge prefers the policy (n={ev['n']})")
    elif high < 0.5:
        reading.append(f"judge prefers the reference (n={ev['n']})")
    else:
        reading.append(f"no clear difference at n={ev['n']}")
    if ref_length and abs(length / ref_length - 1) > LENGTH_DRIFT:
        reading.append(f"length {length / ref_length - 1:+.0%}")
    auc = ev.get("heldout_auc")
    if auc is not None and auc <= 0.5:
        reading.append("held-out AUC at or below chance")
    row["reading"] = "; ".join(reading)
    return row


TERMINAL_COLUMNS = (
    "run",
    "method",
    "win rate [95% CI]",
    "reward (Δ vs ref)",
    "KL",
    "length (ref)",
    "held-out AUC",
)


def _console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=120)  # logs and pipes: do not squeeze to 80


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


def print_eval(result: dict) -> None:
    """eval.json as a terminal table: the policy beside the reference."""
    from rich.table import Table

    low, high = result["win_rate_ci"]
    reward = result["reward"]
    table = Table(title=f"thumbs eval · judge {result['judge']} · n={result['n']}", title_justify="left")
    for column, justify in (("", "left"), ("policy", "right"), ("reference", "right")):
        table.add_column(column, justify=justify)
    table.add_row("win rate [95% CI]", f"{result['win_rate']:.3f} [{low:.3f}, {high:.3f}]", "")
    table.add_row(
        "judge reward ± se",
        f"{reward['policy']['mean']:.3f} ± {fmt(reward['policy']['stderr'])}",
        f"{reward['reference']['mean']:.3f} ± {fmt(reward['reference']['stderr'])}",
    )
    table.add_row(
        "KL(policy ‖ reference)", f"{result['kl']['mean']:.4g} ± {fmt(result['kl']['stderr'])}", "0"
    )
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
    console = _console()
    console.print(table)
    if result.get("path"):
        console.print(f"wrote {result['path']} ({result['seconds']:.0f} s)")


def compare(run_dirs: list[str | Path], out: str | Path = "report.html", *, show: bool = False) -> Path:
    """Write the HTML report for ``run_dirs`` to ``out`` and return its path; ``show`` prints the table."""
    from thumbs import plots
    from thumbs.page import render

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
    run_dirs: list[Path] = typer.Argument(..., help="Run directories to put side by side."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="Where to write the HTML report."),
) -> None:
    """Compare runs in one self-contained HTML report (plots inside) and a terminal table."""
    path = compare(run_dirs, out, show=True)
    typer.echo(f"wrote {path.resolve()}")
