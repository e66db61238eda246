"""Run folders as data: what a run holds (config, metrics, eval, the data it came from), read forgivingly.

A run directory holds ``config.yaml``, ``metrics.jsonl``, ``final/`` and, once evaluated,
``eval.json``; each part is optional here, so a run still training or never evaluated shows what
it has. ``headline`` is the row a ship decision starts from, shared by the HTML and terminal tables.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thumbs.errors import ThumbsError
from thumbs.show import fmt

DATA_FILES = ("data_summary.json", "audit.json", "manifest.json")
LENGTH_DRIFT = 0.2  # flag a policy whose completions are 20% longer or shorter than the reference's
# flag a policy that stops (ends its answer) at most half as often as the reference, 25 points
# less: its answers run to the sampling cap, so its length and reward are the cap's, not its own
STOP_DRIFT = 0.25


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


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _eval_problem(ev: Any) -> str | None:
    """What an eval.json lacks of the numbers a report shows; None when it has them all."""
    if not isinstance(ev, dict):
        return "not a JSON object"
    if not isinstance(ev.get("n"), int) or ev["n"] < 1:
        return "n is not a positive count"
    if not _number(ev.get("win_rate")):
        return "win_rate is not a number"
    ci = ev.get("win_rate_ci")
    if not (isinstance(ci, list) and len(ci) == 2 and all(map(_number, ci))):
        return "win_rate_ci is not two numbers"
    for key in ("kl", "kl_tokens"):
        kl = ev.get(key)
        if (kl is not None or key == "kl") and not (isinstance(kl, dict) and _number(kl.get("mean"))):
            return f"{key}.mean is not a number"
    length = ev.get("length")
    if not (isinstance(length, dict) and _number(length.get("policy")) and _number(length.get("reference"))):
        return "length.policy / length.reference are not numbers"
    reward = ev.get("reward")
    if reward is not None and not all(
        isinstance(reward, dict) and isinstance(reward.get(side), dict) and _number(reward[side].get("mean"))
        for side in ("policy", "reference")
    ):
        return "reward.policy.mean / reward.reference.mean are not numbers"
    return None


def _checked_eval(path: Path) -> dict | None:
    """A run's eval.json as a report reads it, None when it has none. One that does not parse, or
    lacks a number the report shows, stops the report: shown as "not evaluated" it would hide a
    damaged file, and read as it is it would end in a traceback."""
    file = path / "eval.json"
    if not file.exists():
        return None
    hint = f"run `thumbs eval {path}` again: it writes eval.json afresh"
    try:
        value = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ThumbsError(f"eval.json does not parse: {err}", file=str(file), hint=hint) from None
    problem = _eval_problem(value)
    if problem:
        raise ThumbsError(f"eval.json is not a whole thumbs evaluation: {problem}", file=str(file), hint=hint)
    return value


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
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ThumbsError(
                f"config.yaml does not parse: {str(err).splitlines()[0]}",
                file=str(path / "config.yaml"),
                hint="thumbs train writes it; restore it from the run's own copy or train again",
            ) from None
        if not isinstance(run.config, dict):
            raise ThumbsError("config.yaml is not a mapping of settings", file=str(path / "config.yaml"))
    if (path / "metrics.jsonl").exists():
        for line in (path / "metrics.jsonl").read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if isinstance(record, dict):
                run.metrics.append(record)
    run.eval = _checked_eval(path)
    for folder in _data_dirs(path, run.config):
        for filename in DATA_FILES:
            file = (folder / filename).resolve()
            if str(file) not in run.data and file.exists() and (value := _read_json(file)) is not None:
                run.data[str(file)] = value
    return run


def study_cells(path: Path) -> list[Path]:
    """The run folders of a study folder (``study.json``, see thumbs.study) that hold a finished run."""
    study = _read_json(path / "study.json") or {}
    cells = [
        path / cell["dir"] for cell in study.get("cells") or [] if isinstance(cell, dict) and cell.get("dir")
    ]
    return [cell for cell in cells if (cell / "config.yaml").exists()]


def load_runs(run_dirs: list[str | Path]) -> list[Run]:
    """Run folders, a study folder standing for its cells (named study/cell)."""
    paths, names = [], []
    for given in map(Path, run_dirs):
        if (given / "study.json").exists() and not (given / "config.yaml").exists():
            cells = study_cells(given)
            paths += cells
            names += [f"{given.resolve().name}/{cell.name}" for cell in cells]
        else:
            paths.append(given)
            names.append(given.resolve().name)
    if not paths:
        raise ThumbsError(
            "no run directories given", hint="thumbs compare RUN_DIR [RUN_DIR ...] (or a study folder)"
        )
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


def shown_kl(ev: dict) -> tuple[float, float | None, bool]:
    """(mean, standard error, per token?) of the KL a report shows: the per-token estimate where
    eval.json has it (the same quantity as the per-sequence log-ratio, with far less variance for
    a policy close to its reference), else the per-sequence one, as older eval.json files hold."""
    kl = ev.get("kl_tokens") or ev["kl"]
    return kl["mean"], kl.get("stderr"), bool(ev.get("kl_tokens"))


def kl_text(ev: dict) -> str:
    mean, stderr, per_token = shown_kl(ev)
    text = f"{mean:.3g}" + (f" ± {stderr:.2g}" if stderr is not None else "")
    return text if per_token else f"{text} (per sequence)"


def headline(run: Run) -> dict[str, str]:
    """The numbers a ship decision starts from, formatted; shared by the HTML and terminal tables."""
    config, ev = run.config, run.eval or {}
    method = config.get("method", "?")
    lora = (config.get("model") or {}).get("lora") or {}
    section = config.get(method)  # the method's own section: kto, dpo, bco, apo_zero (SFT has none)
    beta = section.get("beta") if isinstance(section, dict) else None
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
    reward = ev.get("reward")  # None under a pairwise judge: verdicts, no scores
    policy, reference = (reward["policy"]["mean"], reward["reference"]["mean"]) if reward else (None, None)
    length, ref_length = ev["length"]["policy"], ev["length"]["reference"]
    row.update(
        {
            "win rate [95% CI]": f"{ev['win_rate']:.2f} [{low:.2f}, {high:.2f}]",
            "reward (Δ vs ref)": f"{policy:.3f} ({policy - reference:+.3f})" if reward else "–",
            "KL": kl_text(ev),
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
    stopped = ev["length"].get("stopped") or {}
    stops, ref_stops = stopped.get("policy"), stopped.get("reference")
    if (
        stops is not None
        and ref_stops is not None
        and ref_stops - stops >= STOP_DRIFT
        and stops <= ref_stops / 2
    ):
        cap = (ev.get("sampling") or {}).get("max_new_tokens")
        cap = f"{cap}-token" if cap else "sampling"
        reading.append(
            f"answers run to the {cap} cap: {stops:.0%} end before it, the reference's {ref_stops:.0%}"
        )
    auc = ev.get("heldout_auc")
    if auc is not None and auc <= 0.5:
        reading.append("held-out AUC at or below chance")
    row["reading"] = "; ".join(reading)
    return row
