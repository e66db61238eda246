"""SQLite and PostgreSQL sources: the database renders each row as a JSON object, read in batches.

SQLite through Python's ``sqlite3`` (its JSON1 ``json_object``; text as bytes, so that a value that
is not UTF-8 costs one quarantined row, not the source), PostgreSQL through a psycopg server-side
cursor over ``row_to_json``. The query runs before DuckDB pulls the batches, so that its errors
reach the user as they are.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pyarrow as pa

from thumbs.data.sources import Source, batch, first_line, quote_ident
from thumbs.errors import ThumbsError

SQL_BATCH = 20_000  # rows per fetch


def sqlite_rows(source: Source) -> Iterator[pa.RecordBatch]:
    """Rows of a SQLite table or query, rendered as JSON objects by SQLite itself (its JSON1).

    The query runs here, so that its errors are the user's to read; DuckDB then pulls the batches.
    """
    try:
        db = sqlite3.connect(f"file:{source.url}?mode=ro", uri=True, check_same_thread=False)
        db.text_factory = bytes  # invalid UTF-8 reaches DuckDB, which quarantines that row alone
        select = source.query or f"SELECT * FROM {quote_ident(_sqlite_table(db, source))}"
        names = [d[0] for d in db.execute(f"SELECT * FROM ({select}) LIMIT 0").description]
        # json_object cannot hold BLOBs: such a value travels as hex text
        pairs = ", ".join(
            f"'{n.replace(chr(39), chr(39) * 2)}', CASE WHEN typeof({quote_ident(n)}) = 'blob' "
            f"THEN hex({quote_ident(n)}) ELSE {quote_ident(n)} END"
            for n in names
        )
        cursor = db.execute(f"SELECT json_object({pairs}) FROM ({select})")
    except sqlite3.Error as err:
        raise ThumbsError(f"SQLite: {err}", file=source.url, hint="check --table / --query") from None
    return _fetched(cursor, db.close, lambda value: value)


def _fetched(cursor, close, to_bytes) -> Iterator[pa.RecordBatch]:
    """Batches of a cursor whose rows are one JSON text each, numbered from 1; closes at the end."""
    try:
        row = 1
        while chunk := cursor.fetchmany(SQL_BATCH):
            raws = [to_bytes(r[0]) for r in chunk]
            yield batch(list(range(row, row + len(raws))), raws, [len(r) for r in raws])
            row += len(raws)
    finally:
        close()


def _sqlite_table(db: sqlite3.Connection, source: Source) -> str:
    if source.table:
        return source.table
    tables = [
        r[0].decode() for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
    ]
    if len(tables) == 1:
        return tables[0]
    raise ThumbsError(
        f"say which table to read (found: {', '.join(tables) or 'none'})",
        file=source.url,
        hint="give --table NAME or --query SQL",
    )


def postgres_rows(source: Source) -> Iterator[pa.RecordBatch]:
    """Rows of a PostgreSQL table or query through a server-side cursor, as JSON from ``row_to_json``."""
    import psycopg
    from psycopg import sql

    if not (source.table or source.query):
        raise ThumbsError(
            "say which table or query to read", file=source.name, hint="give --table or --query"
        )
    try:
        db = psycopg.connect(source.url)
        db.read_only = True
        if source.query:
            select = sql.SQL(source.query)
        else:
            select = sql.SQL("SELECT * FROM {}").format(sql.Identifier(*source.table.split(".")))
        cursor = db.cursor(name="thumbs_ingest")
        cursor.execute(sql.SQL("SELECT row_to_json(t)::text FROM ({}) t").format(select))
    except psycopg.Error as err:
        hint = "check the URL, --table / --query"
        raise ThumbsError(f"PostgreSQL: {first_line(err)}", file=source.name, hint=hint) from None

    def close() -> None:
        cursor.close()
        db.close()

    return _fetched(cursor, close, str.encode)
