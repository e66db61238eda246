"""Properties: every input row is counted once, with the reason its kind of damage calls for; chats
become exactly ``json.dumps(messages, ensure_ascii=False)``."""

from __future__ import annotations

import json

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ingest_fixtures import chat, events, reasons_by_row, run, vote, write_lines
from thumbs.data import macros, staging

# each kind of row, and what ingest must make of it: an event, or a quarantine reason
KINDS = {
    "ok": None,
    "duplicate": None,
    "neutral": None,
    "malformed_json": "malformed_json",
    "missing_field": "missing_field",
    "wrong_type": "wrong_type",
    "bad_label": "bad_label",
    "empty_completion": "empty_completion",
    "invalid_utf8": "invalid_utf8",
    "bad_message": "wrong_type",
}


def _row(kind: str, n: int, previous: dict | None):
    if kind == "duplicate" and previous is not None:
        return previous
    if kind in ("ok", "duplicate"):
        return vote(completion=f"answer {n}", user_id=f"u{n % 3}", label=["up", "down", True, -1][n % 4])
    return {
        "neutral": vote(completion=f"answer {n}", label="neutral"),
        "malformed_json": '{"prompt": "p", "completion": ',
        "missing_field": {"prompt": "p", "label": "up"},
        "wrong_type": vote(completion=["not", "text"]),
        "bad_label": vote(label="perhaps"),
        "empty_completion": vote(completion=""),
        "invalid_utf8": b'{"prompt": "\xc3\x28", "completion": "c", "label": "up"}',
        "bad_message": {"prompt": [{"content": "who said this?"}], "completion": "c", "label": "up"},
    }[kind]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=40))
def test_every_row_is_counted_once_with_its_reason(tmp_path_factory, kinds):
    folder = tmp_path_factory.mktemp("messy")
    lines, previous = [], None
    for n, kind in enumerate(kinds):
        line = _row(kind, n, previous)
        if kind == "duplicate" and previous is None:
            kinds[n] = "ok"  # nothing to repeat yet
        if kinds[n] == "ok":
            previous = line
        lines.append(line)
    out = folder / "out"
    manifest = run([write_lines(folder / "log.jsonl", lines)], out)
    entry = manifest["sources"][0]
    want = {n + 1: KINDS[k] for n, k in enumerate(kinds) if KINDS[k]}
    assert reasons_by_row(out) == want
    assert entry["rows_in"] == len(kinds)
    assert entry["rows_ok"] == kinds.count("ok") == len(events(out))
    assert entry["rows_duplicate"] == kinds.count("duplicate")
    assert entry["rows_neutral"] == kinds.count("neutral")


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": TEXT}
)


@settings(max_examples=150, deadline=None)
@given(messages=st.lists(MESSAGE, max_size=5), ascii_escapes=st.booleans(), parts=st.booleans())
def test_a_chat_becomes_exactly_its_python_json(messages, ascii_escapes, parts):
    con = _connection()
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    logged = [dict(m) for m in messages]
    if parts and logged:  # OpenAI content parts: the text parts joined
        logged[0]["content"] = [{"type": "text", "text": logged[0]["content"]}, {"type": "image_url"}]
    text = json.dumps(logged, ensure_ascii=ascii_escapes)
    (got,) = con.execute(
        """SELECT thumbs_chat(thumbs_messages(j, s, f), s) FROM (
            SELECT j, f, thumbs_simple(j, f) AS s FROM (SELECT ?::JSON AS j, thumbs_fast(?::JSON) AS f))""",
        [text, text],
    ).fetchone()
    assert got == json.dumps(messages, ensure_ascii=False)


_CONNECTION: list = []


def _connection():
    if not _CONNECTION:
        con = duckdb.connect()
        macros.install(con)
        _CONNECTION.append(con)
    return _CONNECTION[0]


def test_chat_with_no_assistant_turn_is_quarantined(tmp_path):
    rows = [
        chat("Hi", "Hello", "Thanks"),
        chat("Hi", "Hello", vote_index=0),
        chat("Hi", "Hello", vote_index=5),
    ]
    out = tmp_path / "out"
    run([write_lines(tmp_path / "c.jsonl", rows)], out)
    assert reasons_by_row(out) == {2: "bad_turn", 3: "bad_turn"}
    assert [e["completion"] for e in events(out)] == ["Hello"]  # the last assistant turn of row 1


LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")) | st.just(b"x" * 200)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(st.tuples(LINE, st.booleans()), min_size=1, max_size=12),
    final_newline=st.booleans(),
    chunk=st.integers(1, 64),
    limit=st.integers(1, 60),
)
def test_lines_split_exactly_whatever_the_chunks(
    tmp_path_factory, monkeypatch, lines, final_newline, chunk, limit
):
    """Line numbers and lengths are exact; a line within the limit is whole; a longer one keeps its head."""
    monkeypatch.setattr(staging, "CHUNK_BYTES", chunk)
    texts = [text + (b"\r" if crlf else b"") for text, crlf in lines]
    body = b"\n".join(texts) + (b"\n" if final_newline else b"")
    path = tmp_path_factory.mktemp("lines") / "log.jsonl"
    path.write_bytes(body)
    got = [row for batch in staging._line_batches(str(path), limit) for row in batch.to_pylist()]
    body = body.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark is no part of line 1
    want = body.split(b"\n")[:-1] if body.endswith(b"\n") or not body else body.split(b"\n")
    want = [w.removesuffix(b"\r") for w in want]
    assert [r["row"] for r in got] == list(range(1, len(want) + 1))
    assert [r["nbytes"] for r in got] == [len(w) for w in want]
    for row, line in zip(got, want, strict=True):
        value = row["raw"][:-1] if row["raw"].endswith(b"\n") else row["raw"]
        value = value[:-1] if value.endswith(b"\r") and len(value) > len(line) else value
        assert value == line if len(line) <= limit else line.startswith(value) and len(value) > limit
