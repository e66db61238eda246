"""The ingest folder: ``events.parquet``, ``quarantine.jsonl``, ``manifest.json``, and merging into it.

A run's candidates (table ``cands``, one row per input row with its ``outcome``) are merged with
what the folder already holds: events of sources read again are replaced, events already present
under another source are duplicates, splits are recomputed over everything, and each file is
written beside its final name and then moved over it, so a failed run leaves the folder as it was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

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


def read_events(path: str | Path, split: str | None = None) -> pa.Table:
    """The events table of an ingest folder (or an ``events.parquet``), optionally one split only."""
    path = Path(path)
    path = path / "events.parquet" if path.is_dir() else path
    if not path.is_file():
        raise ThumbsError("no events file", file=str(path), hint="run `thumbs ingest SOURCE --out DIR` first")
    return pq.read_table(path, filters=[("split", "=", split)] if split else None)


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


def merge(con, out: Path, entries: list[dict], previous: dict, split_by: str, eval_fraction: float) -> dict:
    """Write the three files of ``out`` from ``cands`` and what ``out`` held; return the manifest."""
    replaced = [e["source"] for e in entries]
    con.execute("CREATE OR REPLACE TEMP TABLE replaced AS SELECT unnest(?::VARCHAR[]) AS source", [replaced])
    events_path, quarantine_path = out / "events.parquet", out / "quarantine.jsonl"
    con.execute(f"CREATE TEMP TABLE kept ({EVENTS})")
    if events_path.is_file():
        con.execute(
            f"""INSERT INTO kept SELECT {_names(EVENTS)} FROM read_parquet(?)
            WHERE source NOT IN (SELECT source FROM replaced)""",
            [str(events_path)],
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
    _write_quarantine(con, quarantine_path)
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
    tmp = path.with_name(path.name + ".tmp")
    con.execute(
        f"""COPY (
            SELECT event_id, prompt, completion, label, user_id, "timestamp", source, weight, conversation_id,
                   CASE WHEN {eval_fraction} > 0 AND {rule} THEN 'eval' ELSE 'train' END AS split, meta
            FROM (SELECT *, {first_seen} AS first_seen FROM (SELECT *, {key} AS split_key FROM merged))
            ORDER BY event_id
        ) TO '{_sql_path(tmp)}' (FORMAT parquet, COMPRESSION zstd)"""
    )
    os.replace(tmp, path)


def _write_quarantine(con, path: Path) -> None:
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
    tmp = path.with_name(path.name + ".tmp")
    con.execute(
        f"""COPY (SELECT {columns} FROM (
            {old}
            UNION ALL SELECT {fresh}, 1, src_index, 0 FROM cands WHERE reason IS NOT NULL)
            ORDER BY part, ordinal, src_index, file, row
        ) TO '{_sql_path(tmp)}' (FORMAT json)"""
    )
    os.replace(tmp, path)


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


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
