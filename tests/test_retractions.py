"""Retractions in event logs: by event type or by vote value; either way the earlier vote is gone."""

from __future__ import annotations

from typer.testing import CliRunner

from tests.ingest_fixtures import events, quarantine, run, write_lines
from thumbs.cli import app

GENERATIONS = [{"id": f"g{i}", "prompt": f"P{i}", "completion": f"C{i}"} for i in range(1, 6)]
FEEDBACK = [
    # g1: a vote taken back by an event type
    {"generation_id": "g1", "user_id": "a", "vote": "up", "ts": "2024-01-01T00:00:00Z"},
    {"generation_id": "g1", "user_id": "a", "event": "retract", "ts": "2024-01-01T00:01:00Z"},
    # g2: a vote taken back by a vote value, as a thumbs widget that un-clicks sends it
    {"generation_id": "g2", "user_id": "a", "vote": "down", "ts": "2024-01-01T00:00:00Z"},
    {"generation_id": "g2", "user_id": "a", "vote": "unvote", "ts": "2024-01-01T00:02:00Z"},
    # g3: another voter's vote on it stays; only a's is taken back (by 'clear')
    {"generation_id": "g3", "user_id": "a", "vote": "up", "ts": "2024-01-01T00:00:00Z"},
    {"generation_id": "g3", "user_id": "b", "vote": "down", "ts": "2024-01-01T00:00:30Z"},
    {"generation_id": "g3", "user_id": "a", "vote": "clear", "ts": "2024-01-01T00:03:00Z"},
    # g4: a vote cast again after a retraction counts
    {"generation_id": "g4", "user_id": "c", "vote": "up", "ts": "2024-01-01T00:00:00Z"},
    {"generation_id": "g4", "user_id": "c", "vote": "none", "ts": "2024-01-01T00:01:00Z"},
    {"generation_id": "g4", "user_id": "c", "vote": "down", "ts": "2024-01-01T00:02:00Z"},
    # g5: a value that is not a retraction (nor a vote) is quarantined, and the earlier vote stays
    {"generation_id": "g5", "user_id": "d", "vote": "up", "ts": "2024-01-01T00:00:00Z"},
    {"generation_id": "g5", "user_id": "d", "vote": "maybe later", "ts": "2024-01-01T00:04:00Z"},
]


def _log(tmp_path):
    return write_lines(tmp_path / "gens.jsonl", GENERATIONS), write_lines(tmp_path / "fb.jsonl", FEEDBACK)


def _votes(out) -> set[tuple[str, str, bool]]:
    return {(e["completion"], e["user_id"], e["label"]) for e in events(out)}


def test_retraction_by_event_type_or_by_vote_value_removes_the_vote(tmp_path):
    gens, fb = _log(tmp_path)
    manifest = run([gens], tmp_path / "out", feedback=str(fb))
    assert _votes(tmp_path / "out") == {("C3", "b", False), ("C4", "c", False), ("C5", "d", True)}
    entry = manifest["sources"][0]
    # retract, unvote and clear each take back one earlier vote; g4's 'none' did too, but c's new
    # vote replaces both, so they count with the superseded rows
    assert entry["detail"]["retraction"] == 3 and entry["detail"]["retracted"] == 3
    assert (entry["rows_in"], entry["rows_ok"], entry["rows_quarantined"]) == (12, 3, 1)
    assert (entry["rows_neutral"], entry["rows_duplicate"]) == (6, 2)
    assert "unvote" in entry["retract_values"] and "none" in entry["retract_values"]
    [lost] = quarantine(tmp_path / "out")
    assert lost["reason"] == "bad_label" and "maybe later" in lost["detail"] and lost["row"] == 12


def test_retract_values_option_says_which_values_mean_it(tmp_path):
    gens, fb = _log(tmp_path)
    # only 'unvote' and 'maybe later' are retractions now: 'clear' is no vote, and 'none' is neutral
    manifest = run([gens], tmp_path / "out", feedback=str(fb), retract_values="unvote, Maybe Later")
    assert manifest["sources"][0]["retract_values"] == ["unvote", "maybe later"]
    assert _votes(tmp_path / "out") == {("C3", "a", True), ("C3", "b", False), ("C4", "c", False)}
    [lost] = quarantine(tmp_path / "out")
    assert lost["reason"] == "bad_label" and "clear" in lost["detail"]
    # the event type still retracts whatever the values say; '' turns value retractions off
    run([gens], tmp_path / "none", feedback=str(fb), retract_values="")
    assert ("C1", "a", True) not in _votes(tmp_path / "none")
    assert {q["reason"] for q in quarantine(tmp_path / "none")} == {"bad_label"}
    assert len(quarantine(tmp_path / "none")) == 3  # unvote, clear, maybe later


def test_cli_retract_values(tmp_path):
    gens, fb = _log(tmp_path)
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app, ["ingest", str(gens), "--feedback", str(fb), "--out", str(out), "--retract-values", "clear"]
    )
    assert result.exit_code == 0, result.output
    # 'unvote' is no longer a retraction, so a's down vote on g2 stays and the unvote is quarantined
    assert ("C2", "a", False) in _votes(out)
    assert {q["row"] for q in quarantine(out)} == {4, 12}
