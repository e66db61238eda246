"""The SQL helpers every ingest query uses, installed once on the run's DuckDB connection.

A chat becomes the exact text of ``json.dumps(messages, ensure_ascii=False)``. The fast path
re-spaces DuckDB's own JSON of the messages; that is safe because ``{"role":`` and ``,"content":``
cannot occur inside a JSON string (its quotes are escaped there). Messages with non-text content
(OpenAI content parts: their text parts are joined) or escaped control characters (whose hex
DuckDB writes upper case) take the slow path, which quotes each string itself, with Python's
``json.dumps`` for the rare control characters. Content that is a number or a boolean is taken
as its text; a message without content has the empty text.

Macros over a JSON value take its ``json_type`` too, computed once per field and row.

Two Python functions run on the few rows that need them only: exact quoting of control
characters, and showing a row that is not valid UTF-8 with its bad bytes as ``\\xNN``.
"""

from __future__ import annotations

import json

import duckdb

MACROS = r"""
CREATE OR REPLACE TEMP MACRO thumbs_text(c) AS CASE
    WHEN c IS NULL OR json_type(c) = 'NULL' THEN ''
    WHEN json_type(c) = 'VARCHAR' THEN c->>'$'
    WHEN json_type(c) = 'ARRAY' THEN array_to_string(json_extract_string(c, '$[*].text'), '')
    WHEN json_type(c) <> 'OBJECT' THEN c::VARCHAR END;
CREATE OR REPLACE TEMP MACRO thumbs_quote(s) AS CASE
    WHEN regexp_matches(s, '[\x0b\x0e\x0f\x1a-\x1f]') THEN thumbs_py_quote(s) ELSE to_json(s)::VARCHAR END;
CREATE OR REPLACE TEMP MACRO thumbs_fast(src) AS try(from_json(src, '[{"role": "VARCHAR", "content": "VARCHAR"}]'));
CREATE OR REPLACE TEMP MACRO thumbs_simple(src, fast) AS NOT (contains(src, '\u000') OR contains(src, '\u001')
    OR coalesce(list_bool_or(list_transform(fast, lambda e: left(e.content, 1) IN ('[', '{'))), false));
CREATE OR REPLACE TEMP MACRO thumbs_messages(src, simple, fast) AS CASE WHEN simple
    THEN list_transform(fast, lambda e: {'role': e.role, 'content': coalesce(e.content, '')})
    ELSE list_transform(try(from_json(src, '[{"role": "VARCHAR", "content": "JSON"}]')),
                        lambda e: {'role': e.role, 'content': thumbs_text(e.content)}) END;
CREATE OR REPLACE TEMP MACRO thumbs_bad_chat(msgs) AS
    msgs IS NULL OR coalesce(list_bool_or(list_transform(msgs, lambda m: m.role IS NULL OR m.content IS NULL)), false);
CREATE OR REPLACE TEMP MACRO thumbs_chat(msgs, simple) AS CASE WHEN simple
    THEN replace(replace(replace(to_json(msgs)::VARCHAR,
        '{"role":', '{"role": '), ',"content":', ', "content": '), '},{"role"', '}, {"role"')
    ELSE '[' || array_to_string(list_transform(msgs, lambda m:
        '{"role": ' || thumbs_quote(m.role) || ', "content": ' || thumbs_quote(m.content) || '}'), ', ') || ']' END;
CREATE OR REPLACE TEMP MACRO thumbs_scalar(v, t) AS CASE
    WHEN t = 'VARCHAR' THEN nullif(v->>'$', '')
    WHEN t IN ('BIGINT', 'UBIGINT', 'DOUBLE') THEN v::VARCHAR END;
CREATE OR REPLACE TEMP MACRO thumbs_epoch(x) AS CASE
    WHEN NOT isfinite(x) OR x < -1e11 OR x > 1e17 THEN NULL
    WHEN x > 1e14 THEN to_timestamp(x / 1e6) WHEN x > 1e11 THEN to_timestamp(x / 1e3) ELSE to_timestamp(x) END;
CREATE OR REPLACE TEMP MACRO thumbs_time(v, t) AS CASE
    WHEN t IN ('BIGINT', 'UBIGINT', 'DOUBLE') THEN thumbs_epoch(TRY_CAST(v::VARCHAR AS DOUBLE))
    WHEN t = 'VARCHAR' THEN coalesce(TRY_CAST(v->>'$' AS TIMESTAMPTZ), thumbs_epoch(TRY_CAST(v->>'$' AS DOUBLE))) END;
CREATE OR REPLACE TEMP MACRO thumbs_blank(s) AS CASE
    WHEN s = '' THEN true WHEN ascii(s) > 32 THEN false ELSE regexp_full_match(s, '\s*') END;
CREATE OR REPLACE TEMP MACRO thumbs_part(s) AS CASE WHEN s IS NULL THEN '~|' ELSE strlen(s) || ':' || s || '|' END;
"""


def install(con: duckdb.DuckDBPyConnection) -> None:
    """Register the macros and the two Python functions on ``con``."""
    con.create_function(
        "thumbs_py_quote", lambda s: json.dumps(s, ensure_ascii=False), ["VARCHAR"], "VARCHAR"
    )
    con.create_function(
        "thumbs_bytes_text",
        lambda b: b.rstrip(b"\r\n").decode("utf-8", "backslashreplace"),
        ["BLOB"],
        "VARCHAR",
    )
    con.execute(MACROS)
