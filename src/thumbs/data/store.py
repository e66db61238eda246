"""The ingest folder: ``events.parquet``, ``quarantine.jsonl``, ``manifest.json``, and merging into it.

A run's candidates (table ``cands``, one row per input row with its ``outcome``) are merged with
what the folder already holds: events of sources read again are replaced, events already present
under another source are duplicates, and splits are recomputed over everything. The new files are
written into a staging folder beside the target and swapped in whole (:func:`finish`), so a
reader sees the old complete set or the new one, and a killed run leaves the folder as it was.

``manifest.json`` records the row count, size and SHA-256 of ``events.parquet``;
:func:`verify_events` checks them (or, without them, reads every page) before audit, train or eval
report on the file, so a damaged or half-replaced folder is an error, never a silent result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from thumbs import folders
from thumbs.data.eventlog import COUNTED_AS
from thumbs.errors import ThumbsError

EVENTS = """event_id VARCHAR, prompt VARCHAR, completion VARCHAR, label BOOLEAN, user_id VARCHAR,
    "timestamp" TIMESTAMPTZ, source VARCHAR, weight DOUBLE, conversation_id VARCHAR, meta VARCHAR"""
QUARANTINE = {
    "source": "VARCHAR",
    "file": "VARCHAR",
    "row": "BIGINT",
    "reason": "VARCHAR",
    "detail": "VARCHAR",
}
QUARANTINE |= {"raw_bytes": "BIGINT", "raw_truncated": "BOOLEAN", "raw": "VARCHAR"}
COUNTERS = ("rows_in", "rows_ok", "rows_quarantined", "rows_duplicate", "rows_neutral")
# md5 of user_id, prompt, completion, up/down, time (µs since 1970, UTC) and a builtin's vote key,
# each prefixed by its length in bytes (~ for null) so that no two different votes read alike
EVENT_ID = (
    "md5(concat(thumbs_part(user_id), thumbs_part(prompt), thumbs_part(completion), vote, '|', "
    "thumbs_part(epoch_us(ts)::VARCHAR), thumbs_part(vote_key)))"
)
FILES_LISTED = 100  # a manifest entry lists at most this many files
OUTPUTS = ("events.parquet", "quarantine.jsonl", "manifest.json")
STALE = ("audit.json",)  # describes the events it was made from: not carried into a new set
REINGEST = "run `thumbs ingest` again (into a new folder, or after removing this one)"


def read_events(path: str | Path, split: str | None = None) -> pa.Table:
    """The events table of an ingest folder (or an ``events.parquet``), optionally one split only."""
    return read_parquet(path, filters=[("split", "=", split)] if split else None)


def read_parquet(path: str | Path, **options) -> pa.Table:
    """A Parquet file (or an ingest folder's events), checked by :func:`verify_events` first."""
    path = verify_events(path)
    try:
        return pq.read_table(path, **options)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise ThumbsError(
            f"cannot read it as Parquet ({_first_line(err)})", file=str(path), hint=REINGEST
        ) from None


def verify_events(path: str | Path) -> Path:
    """The Parquet file at ``path`` (``DIR/events.parquet`` for a folder), whole and as ingest wrote it.

    Beside a ``manifest.json`` that records it: the row count, size and SHA-256 must match.
    Otherwise every page is read once. Any fault is a :class:`ThumbsError` naming the file.
    """
    path = Path(path)
    path = path / "events.parquet" if path.is_dir() else path
    if not path.is_file():
        raise ThumbsError("no events file", file=str(path), hint="run `thumbs ingest SOURCE --out DIR` first")
    manifest = read_manifest(path.parent) if path.name == "events.parquet" else {}
    recorded = manifest.get("events_file")
    intact = (
        recorded is not None
        and path.stat().st_size == recorded["bytes"]
        and _sha256(path) == recorded["sha256"]
    )
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError, pa.ArrowException) as err:
        rows, unreadable = None, _first_line(err)
    if rows is not None and "events" in manifest and rows != manifest["events"]:
        raise ThumbsError(
            f"holds {rows:,} events but manifest.json says {manifest['events']:,}: the folder disagrees with itself",
            file=str(path),
            hint=REINGEST,
        )
    if recorded is not None and not intact:
        raise ThumbsError(
            "is not the file ingest wrote (its size or SHA-256 differs from manifest.json): it is damaged or was changed",
            file=str(path),
            hint=f"{REINGEST}; if you changed it on purpose, remove manifest.json beside it",
        )
    if rows is None:
        raise ThumbsError(f"cannot read it as Parquet: damaged, or not Parquet ({unreadable})", file=str(path),
                          hint=REINGEST)  # fmt: skip
    if intact:
        return path
    try:  # no record to compare with: every page must at least decode
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            parquet.read_row_group(group)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise ThumbsError(f"a page cannot be read, the file is damaged ({_first_line(err)})", file=str(path),
                          hint=REINGEST) from None  # fmt: skip
    return path


def verify_quarantine(out: Path, manifest: dict) -> None:
    """``out/quarantine.jsonl`` as ingest wrote it, before its rows are carried into a new set.

    Where ``manifest`` (the folder's, as read) records it, its size and SHA-256 must match; a folder from before that
    record is read as it is (``_write_quarantine`` turns a line that does not parse into the same
    kind of error). Merging never drops a quarantined row silently: a damaged file stops the run.
    """
    path = out / "quarantine.jsonl"
    recorded = manifest.get("quarantine_file")
    if recorded is None or not path.is_file():
        return
    if path.stat().st_size != recorded["bytes"] or _sha256(path) != recorded["sha256"]:
        raise ThumbsError(
            "is not the file ingest wrote (its size or SHA-256 differs from manifest.json): its rejected "
            "rows would be carried into the new folder damaged",
            file=str(path),
            hint="move it aside (keeping its rows) to start a new quarantine, or ingest into a new folder",
        )


def write_output(path: str | Path, text: str) -> Path:
    """Write a command's output file whole (``folders.write_text``), or say in one line why not."""
    path = Path(path)
    folders.make_dir(path.parent)
    if path.is_dir():
        raise ThumbsError("is a folder, not a file to write", file=str(path), hint="give a file name")
    try:
        return folders.write_text(path, text)
    except OSError as err:
        raise ThumbsError(f"cannot write the file: {err.strerror or err}", file=str(path),
                          hint="choose a place you can write to") from None  # fmt: skip


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def read_manifest(out: Path) -> dict:
    path = out / "manifest.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ThumbsError(
            f"the manifest is not valid JSON ({err})", file=str(path), hint="remove the folder"
        ) from None


def merge(
    con, out: Path, staged: Path, entries: list[dict], previous: dict, split_by: str, eval_fraction: float
) -> dict:
    """Write events and quarantine into ``staged`` from ``cands`` and what ``out`` held; return the manifest."""
    replaced = [e["source"] for e in entries]
    con.execute("CREATE OR REPLACE TEMP TABLE replaced AS SELECT unnest(?::VARCHAR[]) AS source", [replaced])
    events_path = staged / "events.parquet"
    con.execute(f"CREATE TEMP TABLE kept ({EVENTS})")
    if (out / "events.parquet").is_file():
        con.execute(
            f"""INSERT INTO kept SELECT {_names(EVENTS)} FROM read_parquet(?)
            WHERE source NOT IN (SELECT source FROM replaced)""",
            [str(out / "events.parquet")],
        )
    # an event already kept, or met earlier in this run, is a duplicate: only ids and keys are sorted
    con.execute(
        """UPDATE cands SET outcome = 'duplicate' FROM (
            SELECT src_index, file, row FROM (
                SELECT src_index, file, row, event_id,
                       row_number() OVER (PARTITION BY event_id ORDER BY src_index, file, row) AS copy
                FROM cands WHERE outcome = 'event')
            WHERE copy > 1 OR event_id IN (SELECT event_id FROM kept)) AS d
        WHERE cands.outcome = 'event' AND cands.src_index = d.src_index
          AND cands.file IS NOT DISTINCT FROM d.file AND cands.row = d.row"""
    )
    con.execute(
        f"""CREATE TEMP VIEW merged AS SELECT {_names(EVENTS)} FROM kept
        UNION ALL SELECT event_id, prompt, completion, vote = 'up', user_id, ts, source, weight, conversation_id, meta
        FROM cands WHERE outcome = 'event'"""
    )
    _write_events(con, events_path, split_by, eval_fraction)
    _write_quarantine(con, out / "quarantine.jsonl", staged / "quarantine.jsonl")
    counted = _count(con, entries)
    fresh_entries = {e["source"]: e for e in counted}
    ordered = [fresh_entries.pop(e["source"], e) for e in previous.get("sources", [])]
    ordered += fresh_entries.values()
    totals = {k: sum(e[k] for e in ordered) for k in COUNTERS}
    splits = dict(
        con.execute(
            "SELECT split, count(*) FROM read_parquet(?) GROUP BY split", [str(events_path)]
        ).fetchall()
    )
    return {
        "events": sum(splits.values()),
        "train": splits.get("train", 0),
        "eval": splits.get("eval", 0),
        "split_by": split_by,
        "eval_fraction": eval_fraction,
        **totals,
        "sources": ordered,
    }


def _names(columns: str) -> str:
    return ", ".join(part.split()[0] for part in columns.split(","))


def _write_events(con, path: Path, split_by: str, eval_fraction: float) -> None:
    # the builtin VADER corpora share one prompt each: there the rated text is what is kept apart
    key = "CASE WHEN source LIKE 'builtin:vader%' THEN completion ELSE prompt END"
    # eval when the first 32 bits of md5(key) fall below eval_fraction of their range
    rule = f"left(md5(split_key), 8) < '{round(eval_fraction * 2**32):08x}'"
    first_seen = "NULL::TIMESTAMPTZ"
    if split_by == "time":
        cutoff = f'(SELECT quantile_disc("timestamp", {1 - eval_fraction}) FROM merged)'
        first_seen = 'min("timestamp") OVER (PARTITION BY split_key)'
        rule = f"CASE WHEN first_seen IS NULL THEN {rule} ELSE first_seen > {cutoff} END"
    con.execute(
        f"""COPY (
            SELECT event_id, prompt, completion, label, user_id, "timestamp", source, weight, conversation_id,
                   CASE WHEN {eval_fraction} > 0 AND {rule} THEN 'eval' ELSE 'train' END AS split, meta
            FROM (SELECT *, {first_seen} AS first_seen FROM (SELECT *, {key} AS split_key FROM merged))
            ORDER BY event_id
        ) TO '{_sql_path(path)}' (FORMAT parquet, COMPRESSION zstd)"""
    )


def _write_quarantine(con, path: Path, staged: Path) -> None:
    """The previous quarantine's rows of sources not read again, then this run's, into ``staged``."""
    import duckdb

    columns = ", ".join(QUARANTINE)
    if path.is_file() and path.stat().st_size:
        types = "{" + ", ".join(f"'{k}': '{v}'" for k, v in QUARANTINE.items()) + "}"
        old = f"""SELECT {columns}, 0 AS part, NULL::INTEGER AS src_index, row_number() OVER () AS ordinal
            FROM read_json('{_sql_path(path)}', format = 'newline_delimited', columns = {types})
            WHERE source NOT IN (SELECT source FROM replaced)"""
    else:
        old = f"SELECT {', '.join(f'NULL::{t} AS {k}' for k, t in QUARANTINE.items())}, 0 AS part, NULL::INTEGER AS src_index, 0 AS ordinal WHERE false"
    fresh = columns.replace(
        "raw_truncated, raw", "raw_truncated, rtrim(raw, chr(13) || chr(10))"
    )  # line endings
    try:
        con.execute(
            f"""COPY (SELECT {columns} FROM (
                {old}
                UNION ALL SELECT {fresh}, 1, src_index, 0 FROM cands WHERE reason IS NOT NULL)
                ORDER BY part, ordinal, src_index, file, row
            ) TO '{_sql_path(staged)}' (FORMAT json)"""
        )
    except duckdb.InvalidInputException as err:  # the previous file: a line that is not JSON
        raise ThumbsError(
            f"cannot carry the previous rejected rows over: {_first_line(err)}",
            file=str(path),
            hint="move it aside (keeping its rows) to start a new quarantine, or ingest into a new folder",
        ) from None


def _count(con, entries: list[dict]) -> list[dict]:
    """Each entry with its counters, reasons and outcome details."""
    outcomes = con.execute("SELECT src_index, outcome, count(*) FROM cands GROUP BY ALL").fetchall()
    reasons = con.execute(
        "SELECT src_index, reason, count(*) FROM cands WHERE reason IS NOT NULL GROUP BY ALL ORDER BY 3 DESC, 2"
    ).fetchall()
    done = []
    for entry in entries:
        index = entry.pop("index")
        counts = dict.fromkeys(COUNTERS, 0)
        counts["rows_in"] = entry.pop("rows_in")
        for src, outcome, n in outcomes:
            if src == index:
                counts[COUNTED_AS[outcome]] += n
                if outcome not in ("event", "quarantined"):
                    entry["detail"][outcome] = n
        files = entry.pop("files")
        done.append(
            {"source": entry.pop("source")}
            | counts
            | {"reasons": {r: n for src, r, n in reasons if src == index}}
            | entry
            | {"files": files[:FILES_LISTED], "file_count": len(files)}
        )
    return done


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def recover(out: Path) -> None:
    """Tidy what a killed ingest left beside ``out`` (call while owning it: nobody else is writing).

    Killed between the two renames of a swap, the folder is missing and its previous set waits in
    ``.NAME.old-PID``: put it back. Staging folders of dead runs are removed.
    """
    leftovers = sorted(out.parent.glob(f".{out.name}.old-*")) + sorted(out.parent.glob(f".{out.name}.tmp-*"))
    for path in leftovers:
        if not out.exists() and ".old-" in path.name:
            os.replace(path, out)
        elif path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def finish(staged: Path, out: Path, manifest: dict) -> dict:
    """Record ``events.parquet`` in the manifest, write it, carry other files over, swap ``staged`` in.

    Files in ``out`` that ingest does not write are hard-linked into the new set; ``audit.json``
    is not (it describes the events being replaced), and the manifest's ``notes`` say so.
    """
    events = staged / "events.parquet"
    manifest["events_file"] = {"rows": manifest["events"], "bytes": events.stat().st_size,
                               "sha256": _sha256(events)}  # fmt: skip
    quarantine = staged / "quarantine.jsonl"
    manifest["quarantine_file"] = {"bytes": quarantine.stat().st_size, "sha256": _sha256(quarantine)}
    manifest["notes"] = []
    for path in sorted(out.iterdir()) if out.is_dir() else []:
        if path.name in OUTPUTS or path.name == ".ingest-tmp":
            continue
        if path.name in STALE:
            manifest["notes"].append(f"{path.name} removed: it described the previous events")
        elif path.is_dir() and not path.is_symlink():
            shutil.copytree(path, staged / path.name, symlinks=True, copy_function=os.link)
        else:
            os.link(path, staged / path.name, follow_symlinks=False)
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    (staged / "manifest.json").write_text(text, encoding="utf-8")
    _sync(staged)
    folders.swap_in(staged, out)
    return manifest


def _sync(folder: Path) -> None:
    """Flush the new files to disk before the rename makes them the folder's contents."""
    for name in OUTPUTS:
        with open(folder / name, "rb") as handle:
            os.fsync(handle.fileno())


def print_summary(manifest: dict, out: Path, seconds: float) -> None:
    """The closing table: counts per source, top quarantine reasons, sources that failed."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"thumbs ingest → {out}", title_justify="left")
    for name in ("source", "in", "ok", "quarantined", "duplicate", "neutral", "top reasons"):
        table.add_column(name, justify="left" if name in ("source", "top reasons") else "right")
    for entry in manifest["sources"]:
        reasons = ", ".join(f"{code} {n:,}" for code, n in list(entry["reasons"].items())[:3])
        table.add_row(entry["source"], *(f"{entry[k]:,}" for k in COUNTERS), reasons or "-")
    console.print(table)
    for entry in manifest["sources"]:
        if entry["rows_in"] and not entry["rows_ok"] and not entry["rows_duplicate"]:
            top = next(iter(entry["reasons"]), "none")
            console.print(
                f"[yellow]{entry['source']}: no row became an event (top reason: {top}); "
                f"see quarantine.jsonl, and map fields with --map FIELD=COLUMN[/]"
            )
        if entry.get("signal"):
            console.print(
                f"{entry['source']}: numeric votes read as {entry['signal']['scale']}: {entry['signal']['rule']}"
            )
    for error in manifest["errors"]:
        read = (
            f"failed after {error['rows_read']:,} rows (counted above)" if error["rows_read"] else "not read"
        )
        console.print(f"[red]{error['source']}: {read}: {error['error']}[/]")
    for note in manifest.get("notes", []):
        console.print(f"[yellow]{note}[/]")
    console.print(
        f"{manifest['events']:,} events (train {manifest['train']:,}, eval {manifest['eval']:,}) in {seconds:.1f}s → "
        f"{out / 'events.parquet'}; quarantined rows → {out / 'quarantine.jsonl'}"
    )
