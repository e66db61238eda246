"""Reading each kind of source into one staging table.

Every reader fills the same DuckDB table, one row per input row, so that everything after it
(mapping, signals, shapes) is one set of queries whatever the source:

    file VARCHAR, row BIGINT, raw VARCHAR, nbytes BIGINT, err VARCHAR

``raw`` is the row as JSON text (JSONL lines as they are; CSV, Parquet, SQL rows as an object
of their columns); ``row`` is the line number for JSONL, and the 1-based record number for CSV
(1 = the first data row), Parquet, SQLite and PostgreSQL; ``err`` is set where the reader
already knows the row is lost (``invalid_utf8``, ``too_large``, ``malformed_row``).

Text is streamed: JSONL through a vectorised line splitter (numpy finds the newlines, Arrow
holds the lines, DuckDB decodes and checks UTF-8), CSV and Parquet by DuckDB itself, SQLite and
PostgreSQL in batches of rows that the database itself renders as JSON (thumbs.data.databases).

A JSONL file whose reading fails part way (a truncated or corrupt gzip, a disk error) keeps every
line decoded before the fault; :func:`stage` returns what failed, and ingest decides whether
that stops the run (the default) or is recorded and read past (``--keep-going``).
"""

from __future__ import annotations

import gzip
import os
import signal
import tempfile
import threading
import zlib
from collections.abc import Iterator

import duckdb
import numpy as np
import pyarrow as pa

from thumbs.data.builtin import stage_vader
from thumbs.data.databases import postgres_rows, sqlite_rows
from thumbs.data.sources import BUILTINS, Source, batch, first_line, quote_ident
from thumbs.errors import ThumbsError

CHUNK_BYTES = 16 << 20  # JSONL read size: big enough for speed, small enough to stream
STAGED_COLUMNS = "file VARCHAR, row BIGINT, raw VARCHAR, nbytes BIGINT, err VARCHAR"
CSV_REJECTS = {"INVALID ENCODING": "invalid_utf8", "INVALID UNICODE": "invalid_utf8"}
CSV_REJECTS |= {"LINE SIZE OVER MAXIMUM": "too_large"}
BATCH_SCHEMA = pa.schema([("row", pa.int64()), ("raw", pa.large_binary()), ("nbytes", pa.int64())])


def stage(con: duckdb.DuckDBPyConnection, source: Source, table: str, *, max_row_bytes: int) -> list[dict]:
    """Create ``table`` (the staging columns above) with every row of ``source`` that can be read.

    Returns the files whose reading stopped part way, each ``{"file", "error"}``; the rows before
    the fault are in ``table``. A file that cannot be read at all raises :class:`ThumbsError`.
    """
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} ({STAGED_COLUMNS})")
    if source.kind == "builtin":
        stage_vader(con, table, BUILTINS[source.name[8:]])
        return []
    if source.kind == "dataset":
        _stage_dataset(con, table, source.name)
        return []
    if source.kind in ("sqlite", "postgres"):
        rows = sqlite_rows(source) if source.kind == "sqlite" else postgres_rows(source)
        _insert_text_batches(con, table, source.name, rows)  # its "file" names the table or query
        return []
    failures: list[dict] = []
    for path in source.files:
        kind = source.formats[path]
        if kind == "json" and _first_char(path) != "[":
            kind = "jsonl"  # a .json file of one object per line
        if kind == "jsonl":
            failed: list[str] = []
            _insert_text_batches(con, table, path, _line_batches(path, max_row_bytes, failed))
            failures += [{"file": path, "error": error} for error in failed]
        elif kind in ("csv", "tsv"):
            failed = _stage_csv(con, table, path, "\t" if kind == "tsv" else None, max_row_bytes)
            failures += [{"file": path, "error": error} for error in failed]
        else:
            _stage_records(con, table, path, kind)
    return failures


class Interrupts:
    """Ctrl-C while DuckDB runs a query, or pulls rows from Python, comes back as a query error
    (or a source that "failed"): remember the signal, so it is reported as the interruption it is."""

    def __enter__(self):
        self.hit, self.old = False, None
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.hit = True
        signal.default_int_handler(signum, frame)

    def check(self) -> None:
        if self.hit:
            raise KeyboardInterrupt

    def __exit__(self, kind, value, traceback):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        if kind is not None and self.hit and not issubclass(kind, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        return False


def _open(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")  # noqa: SIM115


READ_FAULTS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark is not part of line 1


def _first_char(path: str) -> str:
    try:
        with _open(path) as handle:
            return handle.read(4096).lstrip()[:1].decode("latin-1")
    except READ_FAULTS:
        return ""  # read as JSONL, where the fault is reported with the rows before it


def _blocks(path: str, failed: list[str]) -> Iterator[bytes]:
    """The file's bytes, about ``CHUNK_BYTES`` at a time; a fault ends them, keeping what came before.

    The fault's reason goes into ``failed``. ``read1`` hands over each decoded piece as it comes,
    so a truncated gzip gives up every byte it holds before the cut.
    """
    parts, size, done = [], 0, 0
    try:
        with _open(path) as handle:
            while piece := handle.read1(CHUNK_BYTES):
                parts.append(piece)
                size += len(piece)
                if size >= max(CHUNK_BYTES, 3 if done == 0 else 0):
                    block = parts[0] if len(parts) == 1 else b"".join(parts)
                    yield block[3:] if done == 0 and block.startswith(BOM) else block
                    done, parts, size = done + size, [], 0
    except READ_FAULTS as err:
        damaged = isinstance(err, (EOFError, zlib.error, gzip.BadGzipFile))
        kind = "a truncated or corrupt gzip" if damaged else "a read error"
        failed.append(f"reading stopped after {done + size:,} bytes ({kind}: {first_line(err)})")
    if parts:
        block = b"".join(parts)
        yield block[3:] if done == 0 and block.startswith(BOM) else block


def _line_batches(path: str, max_row_bytes: int, failed: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Lines of a (gzipped) text file as Arrow batches ``row, raw, nbytes``, without a loop over lines.

    A line longer than ``max_row_bytes`` is not held whole: only its head is kept (its length is
    still counted), so one absurd line cannot exhaust memory. A read fault ends the lines there
    and is described in ``failed`` (see :func:`_blocks`).
    """
    carry, line_no, overflow = b"", 1, 0  # overflow: bytes of an over-long line dropped so far
    last = b""  # the last byte dropped, to know whether an over-long line ended in \r
    keep = max(max_row_bytes, 1) + 1
    for block in _blocks(path, [] if failed is None else failed):
        data = carry + block if carry else block
        newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
        if overflow or (len(newlines) == 0 and len(data) > keep):
            if len(newlines) == 0:
                overflow += len(data) - min(len(data), keep)
                carry, last = data[:keep], data[-1:]
                continue
            end = int(newlines[0])
            crlf = (data[end - 1 : end] if end > len(carry) else last) == b"\r"
            yield batch([line_no], [data[: min(end, keep)]], [end - crlf + overflow])
            line_no, overflow = line_no + 1, 0
            data, newlines = data[newlines[0] + 1 :], newlines[1:] - (newlines[0] + 1)
        if len(newlines):
            yield _split_lines(data, newlines, line_no)
            line_no += len(newlines)
            carry = data[newlines[-1] + 1 :]
        else:
            carry = data
    if carry or overflow:  # the last line has no newline
        crlf = (last if overflow else carry[-1:]) == b"\r"
        carry = carry[:-1] if crlf and not overflow else carry
        yield batch([line_no], [carry[:keep]], [len(carry) + overflow - (crlf and overflow > 0)])


def _split_lines(data: bytes, newlines: np.ndarray, first_line: int) -> pa.RecordBatch:
    """Zero-copy: each value is a line with its ending (kept: JSON allows it, quarantine trims it).

    ``nbytes`` counts the line without its ending.
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    offsets = np.concatenate(([0], newlines + 1)).astype(np.int64)
    crlf = (newlines > 0) & (arr[np.maximum(newlines - 1, 0)] == 13)
    lengths = np.diff(offsets) - 1 - crlf
    raw = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(newlines), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    rows = pa.array(np.arange(first_line, first_line + len(newlines), dtype=np.int64))
    return pa.record_batch([rows, raw, pa.array(lengths)], names=["row", "raw", "nbytes"])


def _insert_text_batches(con, table: str, file: str, batches) -> None:
    """Decode and check rows of raw bytes inside DuckDB; blank lines are not rows."""
    reader = pa.RecordBatchReader.from_batches(BATCH_SCHEMA, batches)
    con.register("_thumbs_batches", reader)
    try:
        con.execute(
            f"""INSERT INTO {table}
            SELECT ?, row, CASE WHEN text IS NULL THEN thumbs_bytes_text(raw) ELSE text END, nbytes,
                   CASE WHEN text IS NULL THEN 'invalid_utf8' END
            FROM (SELECT row, raw, nbytes, try(decode(raw)) AS text FROM _thumbs_batches)
            WHERE text IS NULL OR NOT (nbytes = 0 OR (nbytes <= 64 AND regexp_full_match(text, '\\s*')))""",
            [file],
        )
    except duckdb.Error as err:  # the reader failed mid-stream (a broken gzip, a lost connection)
        raise ThumbsError(f"reading stopped: {first_line(err)}", file=file) from None
    finally:
        con.unregister("_thumbs_batches")


def _columns(con, relation_sql: str, params: list) -> list[str]:
    return [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {relation_sql}", params).fetchall()]


def _as_json_object(columns: list[str], skip: tuple[str, ...] = ()) -> str:
    fields = ", ".join(f"{quote_ident(c)} := {quote_ident(c)}" for c in columns if c not in skip)
    return f"to_json(struct_pack({fields}))::VARCHAR" if fields else "'{}'"


def _stage_dataset(con, table: str, spec: str) -> None:
    """A ``datasets`` folder or Hub id: each row as a JSON object of its columns, as Parquet's are."""
    from thumbs.data.formats import read_dataset

    rows = read_dataset(spec)
    con.register("_thumbs_dataset", rows)
    try:
        body = _as_json_object(rows.column_names)
        con.execute(
            f"""INSERT INTO {table} SELECT ?, row, raw, strlen(raw), NULL
            FROM (SELECT row_number() OVER () AS row, {body} AS raw FROM _thumbs_dataset)""",
            [spec],
        )
    finally:
        con.unregister("_thumbs_dataset")


def _stage_records(con, table: str, path: str, kind: str) -> None:
    """Parquet (and JSON array) files: every row as a JSON object of its columns."""
    if kind == "parquet":
        relation, row = "read_parquet(?, file_row_number = true)", "file_row_number + 1"
        skip = ("file_row_number",)
    else:
        relation, row, skip = "read_json_objects(?, format = 'array')", "row_number() OVER ()", ()
    try:
        columns = _columns(con, relation, [path])
        body = "json::VARCHAR" if kind == "json" else _as_json_object(columns, skip)
        con.execute(
            f"""INSERT INTO {table} SELECT ?, row, raw, strlen(raw), NULL
            FROM (SELECT {row} AS row, {body} AS raw FROM {relation})""",
            [path, path],
        )
    except duckdb.Error as err:
        raise ThumbsError(f"cannot read the file: {first_line(err)}", file=path) from None


def _stage_csv(
    con, table: str, path: str, delim: str | None, max_row_bytes: int, read_from: str | None = None
) -> list[str]:
    """CSV through DuckDB's reader, all columns as text; rows it rejects keep their line and reason.

    A gzip that breaks part way is read again from the part that decodes (``read_from``, rows
    still named by ``path``); the fault is returned.
    """
    options = "all_varchar = true, parallel = false, store_rejects = true, ignore_errors = true"
    options += f", max_line_size = {max(max_row_bytes, 1024)}"
    params: list = [read_from or path] + ([delim] if delim else [])
    relation = f"read_csv(?, {options}{', delim = ?' if delim else ''})"
    try:
        columns = _columns(con, relation, params)
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _thumbs_csv AS
            SELECT row_number() OVER () AS ordinal, {_as_json_object(columns)} AS raw FROM {relation}""",
            params,
        )
        header = con.execute("SELECT max(has_header::INT + skip_rows) FROM reject_scans").fetchone()[0] or 0
    except duckdb.Error as err:
        if read_from is None and path.endswith(".gz"):
            failed = _stage_csv_prefix(con, table, path, delim, max_row_bytes)
            if failed:
                return failed
        raise ThumbsError(f"cannot read the CSV file: {first_line(err)}", file=path) from None
    # DuckDB numbers records from 1 counting the header; one record can carry several errors
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _thumbs_rejects AS
        SELECT line - {header} AS record, first(csv_line ORDER BY column_idx) AS raw,
               first(error_type ORDER BY column_idx) AS error_type
        FROM reject_errors GROUP BY line"""
    )
    # accepted row i is the i-th record not rejected: skip as many rejects as lie before it
    reasons = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in CSV_REJECTS.items())
    con.execute(
        f"""INSERT INTO {table}
        SELECT ?, c.ordinal + coalesce(g.skipped, 0), c.raw, strlen(c.raw), NULL
        FROM _thumbs_csv c ASOF LEFT JOIN (
            SELECT gap, max(skipped) AS skipped FROM (
                SELECT record - row_number() OVER (ORDER BY record) AS gap, row_number() OVER (ORDER BY record) AS skipped
                FROM _thumbs_rejects) GROUP BY gap) g ON c.ordinal > g.gap
        UNION ALL
        SELECT ?, record, raw, strlen(raw), CASE error_type {reasons} ELSE 'malformed_row' END
        FROM _thumbs_rejects""",
        [path, path],
    )
    con.execute("DROP TABLE _thumbs_csv; DROP TABLE _thumbs_rejects")
    return []


def _stage_csv_prefix(con, table: str, path: str, delim: str | None, max_row_bytes: int) -> list[str]:
    """The rows of a broken gzipped CSV before its fault; [] when it decodes whole (another fault).

    The decoded part goes to a file in DuckDB's spill folder, up to its last line ending: a row
    cut short could still parse (a rating 10 cut to 1), so it is left out, and the error says so.
    """
    spill = con.execute("SELECT current_setting('temp_directory')").fetchone()[0] or tempfile.gettempdir()
    os.makedirs(spill, exist_ok=True)
    failed: list[str] = []
    with tempfile.NamedTemporaryFile(dir=spill, suffix=".csv") as prefix:
        written, last_end = 0, 0
        for block in _blocks(path, failed):
            prefix.write(block)
            if (end := block.rfind(b"\n")) >= 0:
                last_end = written + end + 1
            written += len(block)
        if not failed:
            return []
        prefix.truncate(last_end)
        prefix.flush()
        cut = "; the last row, cut short, was left out" if written > last_end else ""
        _stage_csv(con, table, path, delim, max_row_bytes, read_from=prefix.name)
    return [failed[0] + cut]
