"""`thumbs study STUDY.yaml -o DIR`: every cell trained and evaluated by the code of `thumbs train`
and `thumbs eval`, then gathered into ``study.json`` and ``study.html``.

The folder: ``study.yaml`` (the study as given), ``base.yaml`` (its base training config, builtin
data replaced by the ingested folder), ``data/`` (builtin VADER sets ingested, one vote per
rating), ``cells/NAME/`` (ordinary run folders), ``study.json``, ``study.html``.

A cell with ``final/`` and a matching ``eval.json`` is reused; one with checkpoints resumes; a cell
folder made by another study (a differing config) stops the study before it trains anything. A
cell whose training or evaluation fails is recorded with its error, the others go on, and the
command exits 1 at the end. ``--plan`` prints the commands instead, so cells can run anywhere
(a job array, another machine) and a later ``thumbs study`` only gathers what they wrote (and
runs the head-to-heads between methods at matched KL, ``thumbs.study.versus``).
"""

from __future__ import annotations

import datetime
import json
import shlex
import time
from pathlib import Path

import typer
import yaml

from thumbs.errors import ThumbsError
from thumbs.study.spec import Cell, StudySpec, cells, load_study

EVAL_KEYS = ("n", "seed", "max_new_tokens", "temperature", "top_p")


def _builtin_folder(source: str, out: Path) -> Path:
    return out / "data" / source.removeprefix("builtin:")


def prepare_data(base: dict, cell_list: list[Cell], out: Path, *, ingest: bool) -> list[str]:
    """Builtin VADER sets in ``data.train`` become ingested folders (votes, with an eval split);
    returns the ingest commands. With ``ingest`` they are run here (once; the folder is reused)."""
    data = base.setdefault("data", {})
    data.setdefault("train", "builtin:vader-movies")  # the config's default
    holders = [(data, "train")] + [
        (c.overrides, "data.train") for c in cell_list if "data.train" in c.overrides
    ]
    commands = []
    for holder, key in holders:
        source = holder[key]
        if not (isinstance(source, str) and source.startswith("builtin:vader")):
            continue
        folder = _builtin_folder(source, out)
        command = f"thumbs ingest {source} --out {shlex.quote(str(folder))}"
        if command not in commands:
            commands.append(command)
            if ingest and not (folder / "manifest.json").exists():
                from thumbs.data.ingest import ingest as run_ingest

                run_ingest([source], folder)
        holder[key] = str(folder)
    return commands


def eval_args(spec: StudySpec) -> list[str]:
    e = spec.eval
    args = ["--judge", e.judge, "--n", e.n, "--seed", e.seed, "--max-new-tokens", e.max_new_tokens,
            "--temperature", e.temperature, "--top-p", e.top_p, "--batch-size", e.batch_size,
            "--max-heldout", e.max_heldout]  # fmt: skip
    if e.prompts:
        args += ["--prompts", e.prompts]
    return [str(a) for a in args]


def commands(spec: StudySpec, cell: Cell, out: Path) -> tuple[str, str]:
    """The `thumbs train` and `thumbs eval` command lines that make the cell's folder."""
    cell_dir = shlex.quote(str(out / "cells" / cell.name))
    sets = " ".join(f"--set {shlex.quote(s)}" for s in cell.sets())
    train = f"thumbs train {shlex.quote(str(out / 'base.yaml'))} {sets} -o {cell_dir}"
    return train, f"thumbs eval {cell_dir} " + " ".join(shlex.quote(a) for a in eval_args(spec))


def _flatten(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _mismatch(expected: dict, cell_dir: Path) -> str | None:
    """The first config key in which the cell folder's run differs from what the study asks."""
    try:
        saved = _flatten(yaml.safe_load((cell_dir / "config.yaml").read_text()) or {})
    except (OSError, yaml.YAMLError):
        return "its config.yaml cannot be read"
    for key, value in _flatten(expected).items():
        if key in ("output_dir", "model.name_or_path") or value == "auto" or key not in saved:
            continue
        if saved[key] != value:
            return f"{key} is {saved[key]!r} there, the study gives {value!r}"
    return None


def _eval_matches(spec: StudySpec, path: Path) -> bool:
    try:
        ev = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    sampling = {"n": ev.get("n"), **(ev.get("sampling") or {})}
    return ev.get("judge") == spec.eval.judge and all(
        sampling.get(k) == getattr(spec.eval, k) for k in EVAL_KEYS
    )


def _config(out: Path, cell: Cell):
    from thumbs.config import load_config

    return load_config(
        out / "base.yaml", cell.sets() + [f"output_dir={json.dumps(str(out / 'cells' / cell.name))}"]
    )


def run_cell(spec: StudySpec, cell: Cell, out: Path, say=print) -> dict:
    """Train (or resume, or reuse) and evaluate one cell; its record, failed ones included."""
    from thumbs.eval.evaluation import evaluate
    from thumbs.study.record import cell_record
    from thumbs.train.loop import train

    cfg, cell_dir = _config(out, cell), out / "cells" / cell.name
    timing, stage, reused = {}, "train", []
    try:
        if (cell_dir / "final").exists():
            reused.append("train")
        else:
            resume = (cell_dir / "checkpoints").exists() and (cell_dir / "config.yaml").exists()
            if resume:
                cfg.model.name_or_path = yaml.safe_load((cell_dir / "config.yaml").read_text())["model"][
                    "name_or_path"
                ]
            say(f"thumbs study: training {cell.name}" + (" (resuming)" if resume else ""))
            started = time.perf_counter()
            train(cfg, resume=resume, overwrite=not resume)  # else a stopped attempt's files are cleared
            timing["train"] = round(time.perf_counter() - started, 1)
        stage = "eval"
        if _eval_matches(spec, cell_dir / "eval.json"):
            reused.append("eval")
        else:
            say(f"thumbs study: evaluating {cell.name}")
            started = time.perf_counter()
            e = spec.eval
            evaluate(
                cell_dir, prompts=e.prompts, judge=e.judge, n=e.n, seed=e.seed, max_new_tokens=e.max_new_tokens,
                temperature=e.temperature, top_p=e.top_p, batch_size=e.batch_size, max_heldout=e.max_heldout,
            )  # fmt: skip
            timing["eval"] = round(time.perf_counter() - started, 1)
        error = None
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 — a failed cell is recorded, and the study goes on
        message = getattr(err, "message", None) or f"{type(err).__name__}: {err}"
        error = {"stage": stage, "message": message}
        say(f"thumbs study: cell {cell.name} failed in {stage}: {message}")
    return cell_record(spec, cell, cell_dir, out, error=error, seconds=timing, reused=reused)


def run_study(study: str | Path, out: str | Path, *, plan: bool = False, say=print) -> dict:
    """Run (or, with ``plan``, print) the study at ``study`` into ``out``; return study.json's dict."""
    from thumbs.folders import make_dir, owned, write_text

    spec, base = load_study(study)
    out = Path(out)
    with owned(out, "thumbs study"):
        cell_list = cells(spec, base, source=str(study))
        ingests = prepare_data(base, cell_list, out, ingest=not plan)
        make_dir(out / "cells")
        write_text(out / "base.yaml", yaml.safe_dump(base, sort_keys=False))
        write_text(out / "study.yaml", Path(study).read_text())
        for cell in cell_list:  # a folder from another study stops us before anything trains
            cell_dir = out / "cells" / cell.name
            if (cell_dir / "config.yaml").exists() and (
                why := _mismatch(_config(out, cell).model_dump(mode="json"), cell_dir)
            ):
                raise ThumbsError(f"the cell folder holds a run that differs from the study's cell {cell.name}: {why}",
                                  file=str(cell_dir), hint="use another output folder, or remove that cell folder")  # fmt: skip
        if plan:
            lines = ingests + [line for cell in cell_list for line in commands(spec, cell, out)]
            lines.append(
                f"thumbs study {shlex.quote(str(study))} -o {shlex.quote(str(out))}"
                "   # gathers the cells, then runs the head-to-heads at matched KL"
            )
            print("\n".join(lines))
            return {"plan": lines}
        started = time.perf_counter()
        records = [run_cell(spec, cell, out, say) for cell in cell_list]
        result = gather(spec, records, out, study, started=started, say=say)
    return result


def gather(spec: StudySpec, records: list[dict], out: Path, study, *, started: float, say=print) -> dict:
    """study.json and study.html from the cells' records, with the head-to-heads at matched KL."""
    from thumbs.folders import write_text
    from thumbs.study.page import render
    from thumbs.study.record import comparisons
    from thumbs.study.versus import head_to_heads

    budget = spec.budget.model_dump(exclude_none=True)
    result = {
        "study": str(study),
        "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "budget": budget | {"stated": _budget_sentence(spec, records)},
        "eval": spec.eval.model_dump(),
        "kl_match": spec.kl_match,
        "cells": records,
        "failed": [r["name"] for r in records if r["status"] == "failed"],
    }
    result |= comparisons(records, spec.kl_match)
    result["head_to_head"] = head_to_heads(spec, records, result["comparisons"], out, say)
    result["verdicts"] += [h["text"] for h in result["head_to_head"] if "text" in h]
    result["minutes"] = round((time.perf_counter() - started) / 60, 2)
    write_text(out / "study.json", json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    write_text(out / "study.html", render(result))
    return result


def _budget_sentence(spec: StudySpec, records: list[dict]) -> str:
    got = sorted({r["budget"].get("sequences_with_gradient") for r in records if r["budget"].get("steps")})
    if spec.budget.sequences is not None:
        return (f"every cell: {spec.budget.sequences} sequences with gradient asked; trained "
                f"{', '.join(str(g) for g in got) or '–'} (whole optimizer steps)")  # fmt: skip
    return f"every cell: {spec.budget.epochs:g} epoch(s) over its own examples"


def study_command(
    study: Path = typer.Argument(..., help="Study YAML: base config, grid, conditions, budget, eval."),
    out: Path = typer.Option(None, "--out", "-o", help="Study folder (default: runs/study/<name>)."),
    plan: bool = typer.Option(
        False, "--plan", help="Print each cell's thumbs train / eval commands; run nothing."
    ),
) -> None:
    """Train and evaluate a grid of runs on equal budgets; write study.json and study.html."""
    out = out or Path("runs/study") / study.stem
    try:
        result = run_study(study, out, plan=plan)
    except KeyboardInterrupt:
        typer.echo("\nthumbs study: interrupted; run the same command again to resume.", err=True)
        raise typer.Exit(130) from None
    if plan:
        return
    from thumbs.study.record import print_summary

    print_summary(result, out)
    if result["failed"]:
        typer.secho(f"thumbs study: {len(result['failed'])} cell(s) failed: {', '.join(result['failed'])}",
                    fg=typer.colors.RED, err=True)  # fmt: skip
        raise typer.Exit(1)
