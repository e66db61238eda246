"""Prompts and labelled feedback that evaluation reads: held-out rows of a run's data, or a file.

Feedback sources are what training reads: Parquet, JSONL, or an ingest folder (events.parquet).
When a table has a ``split`` column only its ``eval`` rows are held out; a table without one is
held out only when it is given as evaluation data (``data.eval``, ``--heldout``), never when it
is the training data. Paired rows (prompt, chosen, rejected) count as a thumbs-up for the chosen
and a thumbs-down for the rejected completion.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thumbs.data.store import read_parquet
from thumbs.errors import ThumbsError
from thumbs.tokenize import as_messages, prompt_key

PROMPTS_HINT = (
    "pass --prompts FILE: a text file with one prompt per line, or JSONL with a 'prompt' field "
    "(text or a list of chat messages)"
)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ThumbsError(f"not valid JSON ({err})", file=str(path), row=number) from None
            if not isinstance(row, dict):
                raise ThumbsError("a line must be a JSON object", file=str(path), row=number)
            rows.append(row)
    return rows


def _read_table(source: str) -> pa.Table:
    path = Path(source)
    if path.is_dir():
        path = path / "events.parquet"
    if not path.exists():
        raise ThumbsError(
            "feedback data not found", file=str(path), hint="check data.eval / data.train or --heldout"
        )
    if path.suffix == ".parquet":
        return read_parquet(path)
    if path.suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path)
        for row in rows:  # chat prompts travel as JSON text, as in events.parquet
            if isinstance(row.get("prompt"), list):
                row["prompt"] = json.dumps(row["prompt"], ensure_ascii=False)
        columns = sorted({key for row in rows for key in row})
        return pa.table({c: [row.get(c) for row in rows] for c in columns})
    raise ThumbsError(f"unsupported file type '{path.suffix}'", file=str(path), hint="give Parquet or JSONL")


def heldout_feedback(sources: Sequence[str], *, whole: bool) -> list[dict] | None:
    """Rows {prompt, completion, label} held out from ``sources``; None when there are none.

    ``whole``: a source without a ``split`` column is entirely held out (evaluation data).
    """
    rows: list[dict] = []
    for source in sources:
        table = _read_table(source)
        if "split" in table.column_names:
            table = table.filter(pc.equal(table["split"], "eval"))
        elif not whole:
            continue
        names = set(table.column_names)
        if {"prompt", "chosen", "rejected"} <= names:
            for row in table.select(["prompt", "chosen", "rejected"]).to_pylist():
                rows.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
                rows.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False})
        elif {"prompt", "completion", "label"} <= names:
            rows.extend(table.select(["prompt", "completion", "label"]).to_pylist())
        else:
            raise ThumbsError(
                f"feedback needs columns prompt, completion, label (or prompt, chosen, rejected); "
                f"found {', '.join(table.column_names) or 'none'}",
                file=source,
            )
    rows = [
        r for r in rows if r["prompt"] is not None and r["completion"] is not None and r["label"] is not None
    ]
    return rows or None


def read_prompts(path: Path) -> list[Any]:
    """Prompts from a text file (one per line), JSONL (a ``prompt`` field) or Parquet (a ``prompt`` column)."""
    if not path.exists():
        raise ThumbsError(
            "prompts file not found", file=str(path), hint="give a text file or JSONL with prompts"
        )
    if path.suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path)
        missing = next((i for i, row in enumerate(rows, start=1) if "prompt" not in row), None)
        if missing:
            raise ThumbsError(
                "no 'prompt' field", file=str(path), row=missing, hint="each line needs a prompt"
            )
        prompts = [row["prompt"] for row in rows]
    elif path.suffix == ".parquet":
        table = read_parquet(path)
        if "prompt" not in table.column_names:
            raise ThumbsError("no 'prompt' column", file=str(path))
        prompts = table["prompt"].to_pylist()
    else:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ThumbsError("the prompts file is empty", file=str(path))
    return prompts


def choose_prompts(pool: Sequence[Any], n: int, seed: int) -> tuple[int, list[Any]]:
    """(number of distinct prompts, the prompt of each of the n samples).

    Distinct prompts (by normalised text) are cycled when fewer than n, so a single prompt gives n
    samples of it; when more than n, a seeded choice of n keeps the rest out.
    """
    first: dict[str, Any] = {}
    for prompt in pool:
        first.setdefault(prompt_key(prompt), prompt)
    distinct = list(first.values())
    if len(distinct) > n:
        keep = np.sort(np.random.default_rng(seed).choice(len(distinct), n, replace=False))
        distinct = [distinct[i] for i in keep]
    return len(distinct), [distinct[i % len(distinct)] for i in range(n)]


def prompt_text(prompt: Any, messages: bool = False) -> Any:
    """Readable text of a prompt; with ``messages``, a chat prompt stays a list of messages."""
    chat = as_messages(prompt)
    if chat is None:
        return str(prompt)
    if messages:
        return chat
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in chat)


def prompt_pool(prompts, feedback, feedback_source, config) -> tuple[list, str]:
    """Prompts to sample: given ones, else the held-out prompts, else a builtin task's own prompt."""
    if isinstance(prompts, list):
        return prompts, "list"
    if prompts is not None and prompts != "eval-split":
        return read_prompts(Path(prompts)), str(prompts)
    if feedback:
        return [row["prompt"] for row in feedback], f"eval-split of {feedback_source}"
    train = (
        []
        if config is None
        else [config.data.train]
        if isinstance(config.data.train, str)
        else config.data.train
    )
    if prompts is None and "builtin:vader-movies" in train:
        # Every example shares one prompt; sampling it is the task, though not held out.
        from thumbs.data.examples import MOVIE_PROMPT

        return [json.dumps(MOVIE_PROMPT)], "builtin:vader-movies task prompt (no held-out split)"
    where = "the run's data has no held-out (eval) split" if config else "a model folder brings no prompts"
    raise ThumbsError(f"no prompts to sample: {where}", hint=PROMPTS_HINT)


def run_feedback(config) -> tuple[list[dict] | None, str | None]:
    """Held-out feedback of a run: data.eval when set, else the eval-split rows of data.train."""
    if config.data.eval:
        return heldout_feedback([config.data.eval], whole=True), config.data.eval
    sources = [config.data.train] if isinstance(config.data.train, str) else list(config.data.train)
    sources = [s for s in sources if not s.startswith("builtin:")]
    rows = heldout_feedback(sources, whole=False) if sources else None
    return (rows, ", ".join(sources)) if rows else (None, None)
