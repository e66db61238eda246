"""Training examples from files: checked, with errors that name the file, row and field.

Unpaired (KTO/SFT) examples have ``prompt``, ``completion``, ``label`` (bool, true = thumbs up),
optional ``weight`` (float, default 1) and ``user_id``. Paired (DPO) examples have ``prompt``,
``chosen``, ``rejected`` and optional ``weight``. A prompt is text or a list of chat messages.
Sources: Parquet, JSONL, an ingest output folder (``events.parquet``), ``builtin:vader-movies``,
a ``datasets`` folder (``save_to_disk``) or a Hub dataset id from the local cache; TRL's text and
conversational formats are read as they are (:mod:`thumbs.data.formats`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from thumbs.data.formats import conversational, read_dataset
from thumbs.data.store import read_parquet
from thumbs.errors import ThumbsError

UNPAIRED = ("prompt", "completion", "label")
PAIRED = ("prompt", "chosen", "rejected")
MOVIE_PROMPT = [{"role": "user", "content": "Write a one-sentence movie review."}]


def builtin_vader_movies() -> pa.Table:
    """The VADER movie-review snippets as examples: label = mean human rating > 0 (0 dropped)."""
    from thumbs.data.vader import load_ratings

    rated = [r for r in load_ratings("movies") if r.mean_rating != 0]
    prompt = json.dumps(MOVIE_PROMPT)
    return pa.table(
        {
            "prompt": [prompt] * len(rated),
            "completion": [r.text for r in rated],
            "label": [r.mean_rating > 0 for r in rated],
            "weight": [1.0] * len(rated),
        }
    )


def _read(source: str, split: str | None = None) -> pa.Table:
    dataset = read_dataset(source, split)  # a save_to_disk folder or a Hub dataset id
    if dataset is not None:
        return dataset
    if source == "builtin:vader-movies":
        return builtin_vader_movies()
    if source.startswith("builtin:"):
        raise ThumbsError(
            f"unknown builtin dataset '{source}'",
            hint="use builtin:vader-movies here, or `thumbs ingest builtin:...` and train on its output",
        )
    path = Path(source)
    if path.is_dir():
        path = path / "events.parquet"
    if not path.exists():
        raise ThumbsError("training data not found", file=str(path), hint="check data.train in the config")
    if path.suffix == ".parquet":  # an ingest folder's events are checked against its manifest
        return read_parquet(path)
    try:
        if path.suffix in (".jsonl", ".json"):
            return _read_jsonl(path)
    except pa.ArrowInvalid as err:
        raise ThumbsError(f"cannot read the file: {err}", file=str(path)) from None
    raise ThumbsError(
        f"unsupported file type '{path.suffix}'",
        file=str(path),
        hint="give Parquet, JSONL or a datasets folder, or run `thumbs ingest` on other formats (CSV, SQLite, PostgreSQL)",
    )


def _read_jsonl(path: Path) -> pa.Table:
    rows, lines = [], []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ThumbsError(
                    f"not valid JSON ({err})",
                    file=str(path),
                    row=number,
                    hint="fix the line or run `thumbs ingest`",
                ) from None
            if not isinstance(row, dict):
                raise ThumbsError("a line must be a JSON object", file=str(path), row=number)
            if isinstance(row.get("prompt"), list):  # chat prompts travel as JSON text
                row["prompt"] = json.dumps(row["prompt"], ensure_ascii=False)
            rows.append(row)
            lines.append(number)
    if not rows:
        return pa.table({})
    columns = sorted({key for row in rows for key in row})
    return pa.table({c: _column([row.get(c) for row in rows], c, path, lines) for c in columns})


def _column(values: list, name: str, path: Path, lines: list[int]) -> pa.Array:
    """One JSONL field as an Arrow array; a row whose type differs from the rest is named."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        kinds = Counter(type(v) for v in values if v is not None)
        common = kinds.most_common(1)[0][0]
        row = next(i for i, v in enumerate(values) if v is not None and type(v) is not common)
        what = f"{values[row]!r} is a {type(values[row]).__name__} where other rows hold {common.__name__}"
        if name == "label":
            what = f"label {values[row]!r} is not a boolean"
        raise ThumbsError(
            what,
            file=str(path),
            row=lines[row],
            field=name,
            hint="use true (thumbs up) / false (thumbs down); `thumbs ingest` maps ratings, likes and 👍/👎"
            if name == "label"
            else "make the field the same type in every row",
        ) from None


def _check(table: pa.Table, source: str, required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ThumbsError(
            f"missing column(s) {', '.join(missing)}; found {', '.join(table.column_names) or 'none'}",
            file=source,
            hint=f"training data needs columns {', '.join(required)} (map other names with `thumbs ingest --map`)",
        )
    if table.num_rows == 0:
        raise ThumbsError(
            "the dataset is empty", file=source, hint="point data.train at a file with examples"
        )
    for column in required:
        nulls = table[column].null_count
        if nulls:
            row = pc.index(pc.is_null(table[column]), True).as_py()
            raise ThumbsError(f"{nulls} empty value(s)", file=source, row=row + 1, field=column)
    if "label" in required and not pa.types.is_boolean(table["label"].type):
        values = table["label"].to_pylist()
        row, value = next((i, v) for i, v in enumerate(values) if not isinstance(v, bool))
        raise ThumbsError(
            f"label {value!r} is not a boolean",
            file=source,
            row=row + 1,
            field="label",
            hint="use true (thumbs up) / false (thumbs down); `thumbs ingest` maps ratings, likes and 👍/👎",
        )
    if "weight" in table.column_names:
        weights = table["weight"]
        if not pa.types.is_floating(weights.type) and not pa.types.is_integer(weights.type):
            raise ThumbsError(f"weights must be numbers, got {weights.type}", file=source, field="weight")
        values = pc.cast(pc.fill_null(weights, 1), pa.float64())
        # a NaN or infinite weight reaches the loss and trains an all-NaN model: name its row
        bad = pc.or_(pc.invert(pc.is_finite(values)), pc.less(values, 0))
        if pc.any(bad).as_py():
            row = pc.index(bad, True).as_py()
            raise ThumbsError(
                f"weight {values[row].as_py()} is not a finite non-negative number",
                file=source,
                row=row + 1,
                field="weight",
                hint="give each row a finite weight ≥ 0, or leave it empty for 1",
            )


def load_examples(
    sources: str | list[str], *, split: str | None = None, paired: bool | None = None
) -> pa.Table:
    """Read and check examples; ``split`` keeps rows of that split when a ``split`` column exists.

    ``paired`` None means: whatever the first source holds (``chosen``/``rejected`` ⇒ paired).
    Returns columns prompt (string), completion/label or chosen/rejected, weight (float64).
    """
    tables = []
    for source in [sources] if isinstance(sources, str) else sources:
        table = conversational(_read(source, split), source)
        if split is not None and "split" in table.column_names:
            table = table.filter(pc.equal(table["split"], split))
        is_paired = "chosen" in table.column_names and "rejected" in table.column_names
        paired = is_paired if paired is None else paired
        required = PAIRED if paired else UNPAIRED
        _check(table, source, required)
        keep = list(required) + [c for c in ("weight", "user_id") if c in table.column_names]
        table = table.select(keep)
        if not pa.types.is_string(table["prompt"].type):
            table = table.set_column(0, "prompt", pc.cast(table["prompt"], pa.string()))
        weight = table["weight"] if "weight" in keep else pa.array([1.0] * table.num_rows)
        weight = pc.fill_null(pc.cast(weight, pa.float64()), 1.0)
        table = table.drop_columns(["weight"]) if "weight" in keep else table
        table = table.append_column("weight", weight)
        if "user_id" in table.column_names:
            table = table.set_column(
                table.column_names.index("user_id"), "user_id", pc.cast(table["user_id"], pa.string())
            )
        tables.append(table)
    return pa.concat_tables(tables, promote_options="default")
