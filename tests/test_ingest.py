"""thumbs ingest on JSONL logs: canonical events, every quarantine reason, dedup, splits, re-ingest."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from tests.ingest_fixtures import chat, events, quarantine, reasons_by_row, run, vote, write_lines
from thumbs.cli import app
from thumbs.data.ingest import ingest, read_events
from thumbs.errors import ThumbsError

TEN_MB = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """One log with a good row and one real bad row per quarantine reason (row number = line)."""
    folder = tmp_path_factory.mktemp("messy")
    lines = [
        vote(user_id="u1", timestamp="2024-05-01T10:00:00Z", model="m1"),  # 1 ok
        vote(user_id="u1", timestamp="2024-05-01T10:00:00Z", model="m1"),  # 2 exact duplicate of 1
        '{"prompt": "hi", "completion": "yo", "label": "up"',  # 3 malformed_json
        vote(completion=None),  # 4 missing_field
        vote(completion={"text": "4"}),  # 5 wrong_type
        vote(label="maybe"),  # 6 bad_label
        vote(completion="   "),  # 7 empty_completion
        b'{"prompt": "caf\xe9", "completion": "4", "label": "up"}',  # 8 invalid_utf8 (latin-1 bytes)
        vote(completion="x" * TEN_MB),  # 9 too_large
        "[1, 2, 3]",  # 10 not_an_object
        vote(timestamp="next tuesday"),  # 11 bad_timestamp
        vote(label="neutral"),  # 12 neutral
        "",  # blank line: not a row
        vote(user_id="u2", timestamp="2024-05-01T10:00:00Z"),  # 14 another user's vote: kept
    ]
    log = write_lines(folder / "log.jsonl", lines)
    out = folder / "out"
    return run([log], out), out


def test_every_reason_comes_from_its_row(messy):
    manifest, out = messy
    assert reasons_by_row(out) == {
        3: "malformed_json",
        4: "missing_field",
        5: "wrong_type",
        6: "bad_label",
        7: "empty_completion",
        8: "invalid_utf8",
        9: "too_large",
        10: "not_an_object",
        11: "bad_timestamp",
    }
    entry = manifest["sources"][0]
    assert (entry["rows_in"], entry["rows_ok"], entry["rows_duplicate"], entry["rows_neutral"]) == (
        13,
        2,
        1,
        1,
    )


def test_quarantine_keeps_the_raw_row_and_says_where(messy):
    _, out = messy
    by_row = {q["row"]: q for q in quarantine(out)}
    assert by_row[3]["raw"] == '{"prompt": "hi", "completion": "yo", "label": "up"'
    assert by_row[3]["file"].endswith("log.jsonl") and by_row[3]["source"].endswith("log.jsonl")
    assert "caf\\xe9" in by_row[8]["raw"]  # the bad byte shown, the rest readable
    assert "'maybe'" in by_row[6]["detail"] or '"maybe"' in by_row[6]["detail"]
    big = by_row[9]
    assert big["raw_truncated"] is True and big["raw_bytes"] > TEN_MB
    assert len(big["raw"]) <= 65_536
    assert all(not q["raw_truncated"] for q in by_row.values() if q["row"] != 9)


def test_events_have_the_canonical_columns(messy):
    _, out = messy
    table = read_events(out)
    assert table.schema.names == [
        "event_id",
        "prompt",
        "completion",
        "label",
        "user_id",
        "timestamp",
        "source",
        "weight",
        "conversation_id",
        "split",
        "meta",
    ]
    types = {f.name: f.type for f in table.schema}
    assert types["label"] == pa.bool_() and types["weight"] == pa.float64()
    assert pa.types.is_timestamp(types["timestamp"])
    first = next(e for e in table.to_pylist() if e["user_id"] == "u1")
    assert first["prompt"] == "What is 2+2?" and first["completion"] == "4" and first["label"] is True
    assert first["timestamp"].isoformat() == "2024-05-01T10:00:00+00:00"
    assert json.loads(first["meta"]) == {"model": "m1"} and first["weight"] == 1.0
    assert len({e["event_id"] for e in table.to_pylist()}) == table.num_rows == 2


def test_signals_map_to_thumbs(tmp_path):
    labels = [
        (True, True), (False, False), ("up", True), ("down", False), ("👍", True), ("👎🏽", False), (1, True),
        (-1, False), ("like", True), ("dislike", False), ("thumbs_up", True), ("THUMBS_DOWN", False),
        ("+1", True), ("yes", True), ("-1", False),
    ]  # fmt: skip
    rows = [vote(completion=f"answer {i}", label=label) for i, (label, _) in enumerate(labels)]
    rows.append(vote(completion="neutral one", label=0))  # ±1 scale: 0 is neutral
    out = tmp_path / "out"
    manifest = run([write_lines(tmp_path / "v.jsonl", rows)], out)
    got = {e["completion"]: e["label"] for e in events(out)}
    assert got == {f"answer {i}": want for i, (_, want) in enumerate(labels)}
    assert manifest["sources"][0]["rows_neutral"] == 1
    assert manifest["sources"][0]["signal"]["scale"] == "signed"


def test_star_ratings_use_thresholds_and_count_neutral(tmp_path):
    rows = [vote(completion=f"a{stars}", label=stars) for stars in (1, 2, 3, 4, 5)]
    log = write_lines(tmp_path / "stars.jsonl", rows)
    default = run([log], tmp_path / "default")  # 1-5 stars: up ≥ 4, down ≤ 2
    assert {e["completion"]: e["label"] for e in events(tmp_path / "default")} == {
        "a1": False, "a2": False, "a4": True, "a5": True,
    }  # fmt: skip
    assert default["sources"][0]["rows_neutral"] == 1
    strict = run([log], tmp_path / "strict", positive_at=5, negative_at=1)
    assert {e["completion"]: e["label"] for e in events(tmp_path / "strict")} == {"a1": False, "a5": True}
    assert strict["sources"][0]["rows_neutral"] == 3
    with pytest.raises(ThumbsError, match="below --positive-at"):
        ingest([str(log)], tmp_path / "bad", positive_at=2, negative_at=3)


def test_regenerate_is_a_thumbs_down_only_when_asked(tmp_path):
    log = write_lines(tmp_path / "r.jsonl", [vote(label="regenerate"), vote(completion="5", label="up")])
    off = run([log], tmp_path / "off")
    assert off["sources"][0]["rows_neutral"] == 1 and len(events(tmp_path / "off")) == 1
    run([log], tmp_path / "on", regenerate_as_down=True)
    assert sorted(e["label"] for e in events(tmp_path / "on")) == [False, True]


def test_numbers_without_a_known_scale_ask_for_thresholds(tmp_path):
    log = write_lines(tmp_path / "pct.jsonl", [vote(label=87), vote(completion="5", label=12)])
    with pytest.raises(ThumbsError, match="positive-at"):
        ingest([str(log)], tmp_path / "out")
    run([log], tmp_path / "ok", positive_at=50)
    assert {e["label"] for e in events(tmp_path / "ok")} == {True, False}


def test_map_names_other_columns_and_nested_fields(tmp_path):
    rows = [{"q": "hi", "a": "hello", "fb": {"thumb": "up", "who": "u7"}, "extra": 1}]
    out = tmp_path / "out"
    manifest = run(
        [write_lines(tmp_path / "m.jsonl", rows)],
        out,
        map=["prompt=q", "completion=a", "label=fb.thumb", "user_id=fb.who"],
    )
    (event,) = events(out)
    assert (event["prompt"], event["completion"], event["label"], event["user_id"]) == (
        "hi",
        "hello",
        True,
        "u7",
    )
    assert json.loads(event["meta"]) == {"fb": {}, "extra": 1}
    assert manifest["sources"][0]["mapping"]["label"] == "fb.thumb"
    with pytest.raises(ThumbsError, match="unknown field"):
        ingest([str(tmp_path / "m.jsonl")], tmp_path / "x", map=["colour=q"])


def test_common_aliases_need_no_map(tmp_path):
    rows = [{"input": "hi", "response": "hello", "rating": 5, "user": 42, "created_at": 1714557600}]
    out = tmp_path / "out"
    log = write_lines(tmp_path / "a.jsonl", rows)
    log.write_bytes(b"\xef\xbb\xbf" + log.read_bytes())  # as some exporters write it
    run([log], out)
    (event,) = events(out)
    assert (event["prompt"], event["completion"], event["user_id"]) == ("hi", "hello", "42")
    assert event["timestamp"].isoformat() == "2024-05-01T10:00:00+00:00"


def test_votes_by_different_users_stay_apart_exact_duplicates_collapse(tmp_path):
    rows = [vote(user_id="a"), vote(user_id="b"), vote(user_id="a"), vote(user_id="a", label="down")]
    out = tmp_path / "out"
    manifest = run([write_lines(tmp_path / "d.jsonl", rows)], out)
    assert sorted((e["user_id"], e["label"]) for e in events(out)) == [("a", False), ("a", True), ("b", True)]
    assert manifest["sources"][0]["rows_duplicate"] == 1


def test_reingest_adds_nothing_and_a_new_source_appends(tmp_path):
    first = write_lines(tmp_path / "a.jsonl", [vote(completion=str(i), user_id="u") for i in range(20)])
    second = write_lines(tmp_path / "b.jsonl", [vote(completion=str(i), user_id="u") for i in range(15, 30)])
    out = tmp_path / "out"
    once = run([first], out)
    before = (out / "events.parquet").read_bytes(), (out / "quarantine.jsonl").read_bytes()
    again = run([first], out)
    assert again == once
    assert ((out / "events.parquet").read_bytes(), (out / "quarantine.jsonl").read_bytes()) == before
    both = run([second], out)
    assert both["events"] == 30 and [e["source"] for e in both["sources"]] == [str(first), str(second)]
    assert both["sources"][1]["rows_duplicate"] == 5  # 15..19 were already there
    run([first], out)  # reading the first again keeps the second's events
    assert read_events(out).num_rows == 30


def test_no_prompt_in_both_splits(tmp_path):
    rows = [
        vote(prompt=f"question {i % 200}", completion=f"answer {i}", user_id=f"u{i % 7}") for i in range(2000)
    ]
    out = tmp_path / "out"
    manifest = run([write_lines(tmp_path / "s.jsonl", rows)], out, eval_fraction=0.2)
    train = {e["prompt"] for e in read_events(out, split="train").to_pylist()}
    held = {e["prompt"] for e in read_events(out, split="eval").to_pylist()}
    assert train and held and not train & held
    assert 0.1 < manifest["eval"] / manifest["events"] < 0.3


def test_time_split_holds_out_the_newest_prompts(tmp_path):
    rows = [
        vote(prompt=f"q{i}", completion="a", timestamp=f"2024-01-01T00:00:{i:02d}Z", user_id=u)
        for i in range(50)
        for u in ("x", "y")
    ]
    rows.append(
        vote(prompt="q3", completion="late", timestamp="2024-01-02T00:00:00Z")
    )  # an old prompt, voted late
    out = tmp_path / "out"
    run([write_lines(tmp_path / "t.jsonl", rows)], out, split_by="time", eval_fraction=0.1)
    held = {int(e["prompt"][1:]) for e in read_events(out, split="eval").to_pylist()}
    train = {int(e["prompt"][1:]) for e in read_events(out, split="train").to_pylist()}
    assert 3 <= len(held) <= 6 and max(train) < min(held)  # the newest ~10% of time, q3 stays in train


def test_chat_prompt_is_the_json_of_the_messages_before_the_vote(tmp_path):
    conversation = chat(
        "Hi", "Hello! How can I help?", "Tell me a joke", "Why did the chicken…", user_id="u1"
    )
    pinned = chat("Hi", "Hello!", "Bye", "Goodbye!", vote_index=1)
    out = tmp_path / "out"
    manifest = run([write_lines(tmp_path / "c.jsonl", [conversation, pinned])], out)
    assert manifest["sources"][0]["shape"] == "chat"
    got = {e["completion"]: e["prompt"] for e in events(out)}
    expected = json.dumps(conversation["messages"][:3], ensure_ascii=False)
    assert got["Why did the chicken…"] == expected
    assert got["Hello!"] == json.dumps(pinned["messages"][:1], ensure_ascii=False)


def test_the_trainer_reads_events_parquet_directly(messy):
    from thumbs.data.examples import load_examples

    _, out = messy
    table = load_examples(str(out))
    assert table.num_rows == 2 and table["label"].to_pylist() == [True, True]
    assert set(table.column_names) >= {"prompt", "completion", "label", "weight"}


def test_cli_prints_the_counts_and_fails_when_a_source_fails(tmp_path):
    log = write_lines(tmp_path / "c.jsonl", [vote(), "{broken"])
    runner = CliRunner(env={"COLUMNS": "200"})
    result = runner.invoke(app, ["ingest", str(log), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "malformed_json" in result.output and "1 events" in result.output
    missing = runner.invoke(app, ["ingest", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o2")])
    assert missing.exit_code != 0 and "nothing could be read" in missing.output
    both = [str(log), str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o3")]
    partly = runner.invoke(app, ["ingest", *both])
    assert (
        partly.exit_code == 2
        and "could not be read whole" in partly.output
        and "--keep-going" in partly.output
    )
    assert not (tmp_path / "o3").exists()
    going = runner.invoke(app, ["ingest", *both, "--keep-going"])
    assert going.exit_code == 0 and "not read" in going.output


def test_cli_fails_when_no_row_read_became_an_event_and_keeps_every_row(tmp_path):
    """Rows read, none kept (a wrong mapping, a binary file): the folder is written with every row
    quarantined, but the exit code says there is nothing to train on; rows beside an earlier
    ingest's events are a normal run."""
    rows = [json.dumps({"question": f"q{i}", "answer": f"a{i}", "thumb": "up"}) for i in range(3)]
    log = write_lines(tmp_path / "wrong.jsonl", rows)
    runner = CliRunner(env={"COLUMNS": "200"})
    result = runner.invoke(app, ["ingest", str(log), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "none of the 3 rows read became an event" in result.output and "--map" in result.output
    assert len((tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()) == 3
    mapped = runner.invoke(
        app, ["ingest", str(log), "--out", str(tmp_path / "ok"), "--map", "prompt=question", "--map",
              "completion=answer", "--map", "label=thumb"],
    )  # fmt: skip
    assert mapped.exit_code == 0 and "3 events" in mapped.output, mapped.output
