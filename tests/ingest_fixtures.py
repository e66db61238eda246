"""Builders and checks shared by the ingest tests: logs written as bytes, and the outputs read back."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from thumbs.data.ingest import ingest

COUNTERS = ("rows_ok", "rows_quarantined", "rows_duplicate", "rows_neutral")


def vote(prompt="What is 2+2?", completion="4", label="up", **extra) -> dict:
    return {"prompt": prompt, "completion": completion, "label": label} | extra


def chat(*turns: str, label="up", **extra) -> dict:
    """A conversation of alternating user/assistant turns, voted on (by default) at the last answer."""
    roles = ("user", "assistant")
    messages = [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
    return {"messages": messages, "feedback": label} | extra


def write_lines(path: Path, lines: list[dict | str | bytes]) -> Path:
    """A JSONL file: dicts as JSON, strings and bytes as they are (to write broken rows)."""
    with path.open("wb") as handle:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line, ensure_ascii=False)
            handle.write((line.encode() if isinstance(line, str) else line) + b"\n")
    return path


def run(sources, out: Path, **options) -> dict:
    """Ingest and check the count invariant on every source the manifest holds."""
    manifest = ingest([str(s) for s in sources], out, **options)
    check_invariant(manifest)
    return manifest


def check_invariant(manifest: dict) -> None:
    for entry in manifest["sources"]:
        assert entry["rows_in"] == sum(entry[k] for k in COUNTERS), entry
        assert entry["rows_quarantined"] == sum(entry["reasons"].values()), entry
    assert manifest["rows_in"] == sum(e["rows_in"] for e in manifest["sources"])


def events(out: Path) -> list[dict]:
    return pq.read_table(out / "events.parquet").to_pylist()


def quarantine(out: Path) -> list[dict]:
    path = out / "quarantine.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def reasons_by_row(out: Path) -> dict[int, str]:
    return {q["row"]: q["reason"] for q in quarantine(out)}
