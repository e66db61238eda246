"""Every source kind reaches the same events: CSV, Parquet, folders, globs, gzip, SQLite, builtin:vader."""

from __future__ import annotations

import gzip
import json
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.ingest_fixtures import events, quarantine, reasons_by_row, run, vote, write_lines
from thumbs.data.ingest import ingest
from thumbs.errors import ThumbsError

ROWS = [vote(completion=str(i), label="up" if i % 2 else "down", user_id=f"u{i}") for i in range(6)]


def _pairs(out) -> set[tuple[str, bool]]:
    return {(e["completion"], e["label"]) for e in events(out)}


WANT = {(str(i), bool(i % 2)) for i in range(6)}


def test_csv_gzip_and_tsv(tmp_path):
    text = "prompt,completion,label,user_id\n" + "".join(
        f"Q,{i},{'up' if i % 2 else 'down'},u{i}\n" for i in range(6)
    )
    (tmp_path / "v.csv").write_text(text)
    with gzip.open(tmp_path / "v2.csv.gz", "wt") as handle:
        handle.write(text.replace("Q,", "R,"))
    (tmp_path / "v.tsv").write_text(text.replace(",", "\t"))
    for name in ("v.csv", "v2.csv.gz", "v.tsv"):
        out = tmp_path / f"out-{name}"
        run([tmp_path / name], out)
        assert _pairs(out) == WANT


def test_csv_rows_the_reader_rejects_keep_their_record_number(tmp_path):
    text = b'prompt,completion,label\nQ,"multi\nline",up\nQ,a,b,c\nQ,\xff\xfe,up\nQ,fine,5\nQ,,up\n'
    (tmp_path / "bad.csv").write_bytes(text)
    out = tmp_path / "out"
    manifest = run([tmp_path / "bad.csv"], out, positive_at=4)
    assert reasons_by_row(out) == {2: "malformed_row", 3: "invalid_utf8", 5: "missing_field"}
    assert _pairs(out) == {("multi\nline", True), ("fine", True)}
    assert manifest["sources"][0]["rows_in"] == 5


def test_parquet_folder_and_glob(tmp_path):
    folder = tmp_path / "logs"
    (folder / "day2").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS[:3]), folder / "a.parquet")
    write_lines(folder / "day2" / "b.jsonl", ROWS[3:])
    with gzip.open(folder / "day2" / "c.jsonl.gz", "wb") as handle:
        handle.write(json.dumps(vote(completion="gz", user_id="z")).encode() + b"\n")
    run([folder / "*.parquet", folder / "day2"], tmp_path / "out")
    assert _pairs(tmp_path / "out") == WANT | {("gz", True)}
    mixed = run([folder], tmp_path / "mixed")  # one folder, three formats
    assert mixed["sources"][0]["kind"] == "files" and _pairs(tmp_path / "mixed") == _pairs(tmp_path / "out")
    out = tmp_path / "glob"
    manifest = run([str(folder / "**" / "*.jsonl*")], out)
    assert manifest["sources"][0]["file_count"] == 2


@pytest.fixture
def app_db(tmp_path):
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE votes (id INTEGER PRIMARY KEY, prompt TEXT, completion TEXT, thumbs INTEGER, note BLOB)"
    )
    db.executemany(
        "INSERT INTO votes (prompt, completion, thumbs, note) VALUES (?, ?, ?, ?)",
        [("Q", str(i), i % 2, b"\x00\xff" if i == 0 else None) for i in range(6)],
    )
    db.execute("INSERT INTO votes (prompt, completion, thumbs) VALUES ('Q', CAST(x'ff41' AS TEXT), 1)")
    db.execute("CREATE TABLE other (x)")
    db.commit()
    db.close()
    return path


def test_sqlite_table_and_query(app_db, tmp_path):
    out = tmp_path / "out"
    manifest = run([app_db], out, table="votes")
    assert _pairs(out) == WANT
    assert reasons_by_row(out) == {7: "invalid_utf8"}
    assert manifest["sources"][0]["source"] == f"sqlite:{app_db}#votes"
    assert json.loads(next(e for e in events(out) if e["completion"] == "0")["meta"]) == {
        "id": 1,
        "note": "00FF",
    }
    query = "SELECT prompt, completion, thumbs AS label FROM votes WHERE id <= 2"
    run([f"sqlite:{app_db}"], tmp_path / "q", query=query)
    assert _pairs(tmp_path / "q") == {("0", False), ("1", True)}
    with pytest.raises(ThumbsError, match="nothing could be read"):
        ingest([str(app_db)], tmp_path / "which")  # two tables and no --table


def test_event_log_from_files(tmp_path):
    generations = [
        {"id": "g1", "prompt": "P1", "completion": "C1"},
        {"id": "g2", "messages": [{"role": "user", "content": "P2"}, {"role": "assistant", "content": "C2"}]},
        {"id": "g3", "prompt": "P3", "completion": "C3"},
        "{not json",
    ]
    feedback = [
        {"generation_id": "g1", "user_id": "a", "vote": "up", "ts": "2024-01-01T00:00:00Z"},
        {"generation_id": "g1", "user_id": "a", "vote": "down", "ts": "2024-01-01T00:05:00Z"},  # replaces
        {"generation_id": "g1", "user_id": "b", "vote": "up", "ts": "2024-01-01T00:01:00Z"},  # another voter
        {"generation_id": "g2", "user_id": "a", "vote": "up", "ts": "2024-01-01T00:00:00Z"},
        {"generation_id": "g2", "user_id": "a", "event": "retract", "ts": "2024-01-01T00:09:00Z"},  # removes
        {"generation_id": "g3", "user_id": "c", "event": "regenerate", "ts": "2024-01-01T00:00:00Z"},
        {"generation_id": "g9", "user_id": "c", "vote": "up"},  # unknown generation
    ]
    gens = write_lines(tmp_path / "generations.jsonl", generations)
    votes = write_lines(tmp_path / "feedback.jsonl", feedback)
    out = tmp_path / "out"
    manifest = run([gens], out, feedback=str(votes))
    entry = manifest["sources"][0]
    assert entry["shape"] == "event-log"
    assert sorted((e["completion"], e["user_id"], e["label"]) for e in events(out)) == [
        ("C1", "a", False),
        ("C1", "b", True),
    ]
    assert {q["reason"] for q in quarantine(out)} == {"unknown_generation", "malformed_json"}
    assert (entry["rows_in"], entry["rows_duplicate"], entry["rows_neutral"]) == (8, 1, 3)
    assert entry["detail"]["retracted"] == 1 and entry["detail"]["regenerate_ignored"] == 1
    run([gens], tmp_path / "regen", feedback=str(votes), regenerate_as_down=True)
    assert ("C3", "c", False) in {
        (e["completion"], e["user_id"], e["label"]) for e in events(tmp_path / "regen")
    }


def test_config_file_holds_per_source_options(tmp_path):
    write_lines(tmp_path / "a.jsonl", [{"q": "hi", "a": "yo", "stars": 5}])
    write_lines(tmp_path / "b.jsonl", [vote()])
    (tmp_path / "ingest.yaml").write_text(
        f"eval_fraction: 0.5\nsources:\n  - source: {tmp_path / 'a.jsonl'}\n"
        "    map: {prompt: q, completion: a, label: stars}\n    positive_at: 4\n"
    )
    manifest = run([tmp_path / "b.jsonl"], tmp_path / "out", config=tmp_path / "ingest.yaml")
    assert manifest["eval_fraction"] == 0.5 and len(manifest["sources"]) == 2
    assert {e["completion"] for e in events(tmp_path / "out")} == {"yo", "4"}


def test_builtin_vader_one_event_per_rating(tmp_path):
    from thumbs.data.vader import load_ratings

    texts = load_ratings("amazon")
    ratings = [r for t in texts for r in t.ratings]
    out = tmp_path / "out"
    manifest = run(["builtin:vader-amazon"], out)
    entry = manifest["sources"][0]
    assert entry["rows_in"] == len(ratings) and entry["rows_duplicate"] == 0
    assert entry["rows_neutral"] == sum(r == 0 for r in ratings)
    assert entry["rows_ok"] == sum(r != 0 for r in ratings)
    table = pq.read_table(out / "events.parquet")
    first = texts[0]
    mine = [e for e in table.to_pylist() if json.loads(e["meta"])["text_id"] == first.text_id]
    assert sorted(e["label"] for e in mine) == sorted(r > 0 for r in first.ratings if r != 0)
    event = mine[0]
    assert json.loads(event["prompt"]) == [
        {"role": "user", "content": "Write a one-sentence product review."}
    ]
    assert event["completion"] == first.text and event["user_id"] is None
    assert set(json.loads(event["meta"])) == {"text_id", "rating", "corpus", "rating_index"}
    # one text's ratings all sit in one split: the texts, not the shared prompt, are held out
    splits = {}
    for e in table.select(["completion", "split"]).to_pylist():
        splits.setdefault(e["completion"], set()).add(e["split"])
    assert all(len(s) == 1 for s in splits.values()) and {"train", "eval"} <= set().union(*splits.values())
