"""What study.json says about each cell (its budget as trained, its evaluation) and the comparisons
between its lines, read from the cell folders themselves.

The evaluation numbers prefer the precise estimates when ``eval.json`` has them (``kl_tokens``:
token-level KL; ``reward_diff``: the paired policy − reference difference) and fall back to the
sequence-level ``kl`` and the unpaired difference of the two reward means.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import yaml

from thumbs.report.runs import shown_kl
from thumbs.study.spec import Cell, StudySpec, grad_sequences
from thumbs.study.verdict import Point, compare, line

Z95 = 1.959963984540054


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _last_step(path: Path) -> int | None:
    step = None
    if path.exists():
        for text in path.read_text().splitlines():
            try:
                step = json.loads(text).get("step", step)
            except (json.JSONDecodeError, AttributeError):
                continue
    return step


def budget_record(spec: StudySpec, method: str, config: dict, cell_dir: Path) -> dict:
    """The budget the cell trained on: optimizer steps, sequences with gradient, epochs over its own
    examples, the votes it came from and the votes it could not use (DPO: prompts with one class)."""
    train = config.get("train") or {}
    per_step = train.get("batch_size", 0) * train.get("grad_accum", 1)
    asked = spec.budget.model_dump(exclude_none=True)
    summary = _read_json(cell_dir / "data_summary.json") or {}
    steps = _last_step(cell_dir / "metrics.jsonl")
    record: dict = {"asked": asked, "steps": steps}
    if not summary or not steps:
        return record
    examples = summary.get("examples") or 0
    pairing = summary.get("pairing") or {}
    votes = pairing.get("feedback_examples", examples)
    record |= {
        "unit": "sequences with gradient (a DPO pair is two)",
        "sequences_with_gradient": steps * per_step * grad_sequences(method),
        "examples": examples,
        "epochs": round(steps * per_step / examples, 3) if examples else None,
        "votes": votes,
        "unusable_votes": pairing.get("unusable_examples", 0),
        "pairs": pairing.get("pairs"),
        "condition": summary.get("condition"),
    }
    return record


def eval_record(ev: dict) -> dict:
    """The numbers a frontier needs from eval.json, with where each came from. A pairwise judge
    gives no scores: its win rate over the reference stands in for the reward (the reference at 0.5)."""
    if ev.get("reward"):
        policy, reference, axis = ev["reward"]["policy"], ev["reward"]["reference"], "judge reward"
    else:
        low, high = ev["win_rate_ci"]
        policy = {"mean": ev["win_rate"], "stderr": (high - low) / (2 * Z95)}
        reference, axis = {"mean": 0.5, "stderr": 0.0}, "win rate over the reference"
    kl_mean, kl_stderr, per_token = shown_kl(ev)
    diff = ev.get("reward_diff")
    if not diff:
        se = math.hypot(policy.get("stderr") or 0.0, reference.get("stderr") or 0.0)
        mean = policy["mean"] - reference["mean"]
        diff = {"mean": mean, "stderr": se, "ci": [mean - Z95 * se, mean + Z95 * se]}
    return {
        "n": ev["n"],
        "judge": ev.get("judge"),
        "kl": {"mean": kl_mean, "stderr": kl_stderr, "estimate": "kl_tokens" if per_token else "kl"},
        "reward": policy,
        "axis": axis,
        "reference_reward": reference,
        "reward_diff": diff | {"paired": bool(ev.get("reward_diff"))},
        "win_rate": ev.get("win_rate"),
        "win_rate_ci": ev.get("win_rate_ci"),
        "length": (ev.get("length") or {}).get("policy"),
        "reference_length": (ev.get("length") or {}).get("reference"),
        "heldout_auc": ev.get("heldout_auc"),
    }


def cell_record(
    spec: StudySpec, cell: Cell, cell_dir: Path, out: Path, *, error=None, seconds=None, reused=()
) -> dict:
    config = {}
    if (cell_dir / "config.yaml").exists():
        config = yaml.safe_load((cell_dir / "config.yaml").read_text()) or {}
    beta = (config.get(cell.method) or {}).get("beta", cell.beta)
    ev = _read_json(cell_dir / "eval.json")
    done = error is None and (cell_dir / "final").exists() and ev is not None
    return {
        "name": cell.name,
        "dir": str((cell_dir).relative_to(out)) if cell_dir.is_relative_to(out) else str(cell_dir),
        "condition": cell.condition,
        "variant": cell.variant,
        "method": cell.method,
        "beta": beta,
        "seed": cell.seed,
        "overrides": cell.overrides,
        "status": "done" if done else "failed" if error else "pending",
        "error": error,
        "budget": budget_record(spec, cell.method, config, cell_dir),
        "result": eval_record(ev) if done else None,
        "seconds": seconds or {},
        "reused": list(reused),
    }


def _label(record: dict, several: bool) -> str:
    if not several:
        return record["method"]
    where = record["condition"] + (f", {record['variant']}" if record["variant"] else "")
    return f"{record['method']} ({where})"


def _point(record: dict) -> Point:
    r = record["result"]
    return Point(kl=r["kl"]["mean"], kl_se=r["kl"]["stderr"] or 0.0, reward=r["reward"]["mean"],
                 reward_se=r["reward"]["stderr"] or 0.0, n=r["n"], beta=record["beta"])  # fmt: skip


def comparisons(records: list[dict], kl_match: float) -> dict:
    """Lines (one per method, condition and setting) and the verdicts between them."""
    groups = list(dict.fromkeys((r["condition"], r["variant"]) for r in records))
    several = len(groups) > 1
    lines: dict[tuple, dict] = {}
    for record in records:
        key = (record["condition"], record["variant"], record["method"])
        entry = lines.setdefault(key, {"label": _label(record, several), "condition": key[0], "variant": key[1],
                                       "method": key[2], "cells": [], "points": []})  # fmt: skip
        entry["cells"].append(record["name"])
        if record["status"] == "done":
            entry["points"].append(_point(record))
    for entry in lines.values():
        entry["frontier"] = line(entry["points"])
    pairs = []
    for (ca, va, ma), (cb, vb, mb) in itertools.combinations(lines, 2):
        same_setting = (ca, va) == (cb, vb)  # methods against each other
        same_method = ca == cb and ma == mb  # settings against each other, one condition
        if same_setting or same_method:
            pairs.append(((ca, va, ma), (cb, vb, mb)))
    results = []
    for a, b in pairs:
        la, lb = lines[a], lines[b]
        if not la["frontier"] or not lb["frontier"]:
            continue
        verdict = compare(la["label"], la["frontier"], lb["label"], lb["frontier"], kl_match=kl_match)
        results.append(verdict | {"condition": a[0], "lines": [list(a), list(b)]})
    return {
        "lines": [
            {k: v for k, v in entry.items() if k != "points"}
            | {"frontier": [p.__dict__ for p in entry["frontier"]]}
            for entry in lines.values()
        ],
        "comparisons": results,
        "verdicts": [r["text"] for r in results],
    }


def print_summary(result: dict, out: Path) -> None:
    """The cells and the verdicts in the terminal."""
    from rich.table import Table

    from thumbs.show import console, fmt

    table = Table(title=f"thumbs study · {len(result['cells'])} cells", title_justify="left")
    for column in (
        "cell",
        "status",
        "steps",
        "sequences",
        "epochs",
        "KL ± se",
        "reward Δ [95% CI]",
        "win rate",
    ):
        table.add_column(column, justify="left" if column in ("cell", "status") else "right")
    for cell in result["cells"]:
        r, b = cell["result"], cell["budget"]
        kl = f"{r['kl']['mean']:.3g} ± {fmt(r['kl']['stderr'])}" if r else "–"
        diff = r["reward_diff"] if r else None
        delta = f"{diff['mean']:+.3f} [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]" if diff else "–"
        status = cell["status"] + (" (reused)" if "train" in cell["reused"] else "")
        table.add_row(cell["name"], status, fmt(b.get("steps")), fmt(b.get("sequences_with_gradient")),
                      fmt(b.get("epochs")), kl, delta, fmt(r["win_rate"]) if r else "–")  # fmt: skip
    shown = console()
    shown.print(table)
    for cell in result["cells"]:
        if cell["error"]:
            shown.print(f"  {cell['name']} failed ({cell['error']['stage']}): {cell['error']['message']}",
                        markup=False, highlight=False)  # fmt: skip
    for text in result["verdicts"]:
        shown.print(f"• {text}", markup=False, highlight=False)
    shown.print(f"wrote {out / 'study.json'} and {out / 'study.html'}")
