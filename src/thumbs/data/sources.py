"""Where feedback comes from: SOURCE specs resolved into files, tables or a builtin data set.

Reading them is thumbs.data.staging; the helpers at the bottom are shared by every reader.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa

from thumbs.data.formats import hub_id, is_saved_dataset
from thumbs.errors import ThumbsError

FILE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}
FILE_FORMATS |= {".parquet": "parquet", ".pq": "parquet"}
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
BUILTINS = {"vader": ("movies", "amazon", "tweets", "nyt")} | {
    f"vader-{c}": (c,) for c in ("movies", "amazon", "tweets", "nyt")
}


@dataclass
class Source:
    """One thing to read: files of one format, a SQL table or query, or a builtin dataset."""

    name: str  # how outputs name it (never holds a password)
    kind: str  # jsonl | json | csv | tsv | parquet | files (several formats) | sqlite | postgres | builtin | dataset
    files: list[str] = field(default_factory=list)
    table: str | None = None
    query: str | None = None
    url: str | None = None  # SQLite path or PostgreSQL URL, as given
    formats: dict[str, str] = field(default_factory=dict)  # file -> its format (a folder may mix them)


def resolve(
    spec: str, *, fmt: str | None = None, table: str | None = None, query: str | None = None
) -> Source:
    """A SOURCE argument as a :class:`Source`: file, folder, glob, SQLite, PostgreSQL or builtin."""
    if spec.startswith("builtin:"):
        if spec[8:] not in BUILTINS:
            raise ThumbsError(
                f"unknown builtin source '{spec}'", hint=f"use one of builtin:{', builtin:'.join(BUILTINS)}"
            )
        return Source(spec, "builtin")
    if spec.startswith(("postgresql://", "postgres://")):
        return Source(
            _sql_name(_without_password(spec), table, query), "postgres", table=table, query=query, url=spec
        )
    path = spec[len("sqlite:") :] if spec.startswith("sqlite:") else spec
    if spec.startswith("sqlite:") or fmt == "sqlite" or path.endswith(SQLITE_SUFFIXES):
        if not Path(path).is_file():
            raise ThumbsError("SQLite database not found", file=path, hint="check the path")
        return Source(
            _sql_name(f"sqlite:{os.path.normpath(path)}", table, query), "sqlite", [path], table, query, path
        )
    if table or query:
        raise ThumbsError("--table/--query apply to SQLite and PostgreSQL sources", file=spec)
    if is_saved_dataset(Path(spec)) or hub_id(spec):  # read through `datasets` (thumbs.data.formats)
        return Source(spec, "dataset", [spec])
    files = _expand(spec)
    formats = {f: fmt or _format_of(f) for f in files}
    kinds = set(formats.values())
    return Source(os.path.normpath(spec), kinds.pop() if len(kinds) == 1 else "files", files, formats=formats)


def _sql_name(base: str, table: str | None, query: str | None) -> str:
    if query:
        return f"{base}#query-{hashlib.md5(query.encode()).hexdigest()[:8]}"
    return f"{base}#{table}" if table else base


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{netloc[1]}"))


def _expand(spec: str) -> list[str]:
    path = Path(spec)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and _format_of(str(p), strict=False))
        if not files:
            raise ThumbsError("folder holds no JSONL, CSV or Parquet files", file=spec)
        return files
    if path.is_file():
        return [spec]
    files = sorted(f for f in glob.glob(spec, recursive=True) if Path(f).is_file())
    if not files:
        raise ThumbsError("no such file (or the glob matches nothing)", file=spec, hint="check the path")
    return files


def _format_of(path: str, *, strict: bool = True) -> str | None:
    name = path[:-3] if path.endswith(".gz") else path
    found = FILE_FORMATS.get(Path(name).suffix.lower())
    if found is None and strict:
        raise ThumbsError(
            "cannot tell the format from the file name",
            file=path,
            hint="use .jsonl/.csv/.tsv/.parquet (optionally .gz), or give --format",
        )
    return found


def batch(rows: list[int], raws: list[bytes], nbytes: list[int]) -> pa.RecordBatch:
    return pa.record_batch(
        [pa.array(rows, pa.int64()), pa.array(raws, pa.large_binary()), pa.array(nbytes, pa.int64())],
        names=["row", "raw", "nbytes"],
    )


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0][:300]
