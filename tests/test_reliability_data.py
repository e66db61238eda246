"""Faults injected into ingest, audit and the readers of an ingest folder: each ends with a clear
exit code and message, and the folder that was there before is left whole.

Kills and Ctrl-C run the real CLI in a subprocess, with one function patched to die (or wait)
at the chosen moment.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.ingest_fixtures import check_invariant, events, run, vote, write_lines
from thumbs.cli import app
from thumbs.data import store
from thumbs.data.examples import load_examples
from thumbs.errors import ThumbsError

OUTPUTS = ("events.parquet", "quarantine.jsonl", "manifest.json")


def _log(path: Path, n: int, tag: str) -> Path:
    lines = [vote(prompt=f"{tag} prompt {i}", completion=f"{tag} answer {i}", label=["up", "down"][i % 2],
                  user_id=f"u{i % 3}") for i in range(n)]  # fmt: skip
    return write_lines(path, lines + ["{broken"])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in OUTPUTS}


def _leftovers(folder: Path) -> list[str]:
    """Staging or swapped-out folders beside ``folder``."""
    return sorted(p.name for p in folder.parent.glob(f".{folder.name}.*") if p.is_dir())


def _good_folder(tmp_path: Path, n: int = 6) -> tuple[Path, dict[str, bytes]]:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["ingest", str(_log(tmp_path / "old.jsonl", n, "old")), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out, _snapshot(out)


def _assert_clear(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


# A subprocess that runs `thumbs ARGS...` with PATCH applied first.
CLI = """
import os, sys, time, pathlib
from thumbs.data import store, staging
{patch}
from thumbs.cli import main
sys.argv = ["thumbs", *sys.argv[1:]]
main()
"""


def _thumbs(patch: str, *args: str, wait: bool = True):
    script = CLI.format(patch=textwrap.dedent(patch))
    process = subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell's & ignores it
    )
    if not wait:
        return process
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout + stderr


def _wait_for(process, word: str) -> None:
    line = process.stdout.readline()
    assert line.strip() == word, line + process.stderr.read()


# ---- killed or interrupted part way: the previous folder stays whole ---------------------------------


def test_a_kill_while_the_manifest_is_written_leaves_the_previous_folder(tmp_path):
    out, before = _good_folder(tmp_path)
    patch = """
        real = pathlib.Path.write_text
        def dying(self, text, *args, **kwargs):
            if self.name == "manifest.json":
                real(self, text[: len(text) // 2], *args, **kwargs)  # half of it, then kill -9
                os._exit(9)
            return real(self, text, *args, **kwargs)
        pathlib.Path.write_text = dying
    """
    new = _log(tmp_path / "new.jsonl", 4, "new")
    code, output = _thumbs(patch, "ingest", new, "--out", out)
    assert code == 9, output
    assert _snapshot(out) == before  # events, quarantine and manifest of the old run, together
    audit = CliRunner().invoke(app, ["audit", str(out), "--json"])
    assert audit.exit_code == 0 and json.loads(audit.stdout)["counts"]["events"] == 6
    again = CliRunner().invoke(app, ["ingest", str(new), "--out", str(out)])  # takes over, tidies up
    assert again.exit_code == 0, again.output
    assert len(events(out)) == 10 and _leftovers(out) == []


def test_a_kill_between_the_two_renames_of_the_swap_is_undone_by_the_next_ingest(tmp_path):
    out, before = _good_folder(tmp_path)
    os.replace(out, out.parent / f".{out.name}.old-99999")  # the old set moved away, the new not yet in
    (out.parent / f".{out.name}.tmp-99999").mkdir()
    result = CliRunner().invoke(
        app, ["ingest", str(_log(tmp_path / "new.jsonl", 4, "new")), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert len(events(out)) == 10 and _leftovers(out) == []
    assert {e["source"] for e in json.loads((out / "manifest.json").read_text())["sources"]} == {
        str(tmp_path / "old.jsonl"),
        str(tmp_path / "new.jsonl"),
    }


def test_ctrl_c_during_ingest_is_one_line_exit_130_and_changes_nothing(tmp_path):
    out, before = _good_folder(tmp_path)
    patch = """
        real = staging._line_batches
        def slow(*args, **kwargs):
            for batch in real(*args, **kwargs):
                yield batch
                print("reading", flush=True)
                time.sleep(60)  # DuckDB is pulling rows from Python when Ctrl-C comes
        staging._line_batches = slow
    """
    process = _thumbs(patch, "ingest", _log(tmp_path / "new.jsonl", 4, "new"), "--out", out, wait=False)
    _wait_for(process, "reading")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stdout + stderr
    assert "interrupted" in stderr and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert _snapshot(out) == before and _leftovers(out) == []


def test_ctrl_c_while_the_new_files_are_written(tmp_path):
    out, before = _good_folder(tmp_path)
    patch = """
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt
        store._write_quarantine = interrupted
    """
    code, output = _thumbs(patch, "ingest", _log(tmp_path / "new.jsonl", 4, "new"), "--out", out)
    assert code == 130 and "interrupted" in output and "Traceback" not in output
    assert _snapshot(out) == before and _leftovers(out) == []


def test_two_ingests_into_one_folder_the_second_is_refused_the_first_is_whole(tmp_path):
    out = tmp_path / "out"
    go = tmp_path / "go"
    patch = f"""
        real = store.merge
        def waiting(*args, **kwargs):
            print("merging", flush=True)
            for _ in range(600):
                if os.path.exists({str(go)!r}):
                    break
                time.sleep(0.1)
            return real(*args, **kwargs)
        store.merge = waiting
    """
    first_log, second_log = _log(tmp_path / "a.jsonl", 5, "a"), _log(tmp_path / "b.jsonl", 3, "b")
    first = _thumbs(patch, "ingest", first_log, "--out", out, wait=False)
    try:
        _wait_for(first, "merging")
        second = CliRunner().invoke(app, ["ingest", str(second_log), "--out", str(out)])
        _assert_clear(second, 2, "in use by another thumbs command", "thumbs ingest", str(out))
        go.touch()
        stdout, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, stdout + stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["source"] for e in manifest["sources"]] == [str(first_log)]
    assert manifest["events"] == len(events(out)) == 5
    assert {e["source"] for e in events(out)} == {str(first_log)}
    store.verify_events(out)


# ---- a source that fails part way --------------------------------------------------------------------


def _truncated_gzip(path: Path, n: int) -> Path:
    body = "".join(
        json.dumps(vote(prompt=f"gz {i}", completion=f"gz answer {i} " * 8)) + "\n" for i in range(n)
    )
    packed = gzip.compress(body.encode())
    path.write_bytes(packed[: len(packed) // 2])
    return path


def test_a_truncated_gzip_beside_a_good_file_fails_the_run_and_writes_nothing(tmp_path):
    out, before = _good_folder(tmp_path)
    good, bad = _log(tmp_path / "good.jsonl", 4, "good"), _truncated_gzip(tmp_path / "bad.jsonl.gz", 3000)
    result = CliRunner().invoke(app, ["ingest", str(good), str(bad), "--out", str(out)])
    _assert_clear(result, 2, "could not be read whole", str(bad), "truncated or corrupt gzip", "--keep-going",
                  "nothing was written")  # fmt: skip
    assert _snapshot(out) == before and _leftovers(out) == []


def test_keep_going_ingests_what_was_read_and_records_the_failure(tmp_path):
    out, _ = _good_folder(tmp_path)
    good, bad = _log(tmp_path / "good.jsonl", 4, "good"), _truncated_gzip(tmp_path / "bad.jsonl.gz", 3000)
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["ingest", str(good), str(bad), "--out", str(out), "--keep-going"]
    )
    assert result.exit_code == 0, result.output
    assert "failed after" in result.output and "truncated or corrupt gzip" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    check_invariant(manifest)
    by_source = {e["source"]: e for e in manifest["sources"]}
    assert by_source[str(good)]["status"] == "ok" and "error" not in by_source[str(good)]
    failed = by_source[str(bad)]
    assert failed["status"] == "failed" and "truncated or corrupt gzip" in failed["error"]
    assert 0 < failed["rows_in"] < 3000  # the lines before the cut, each counted
    assert failed["rows_ok"] >= failed["rows_in"] - 1  # at most the cut last line is quarantined
    assert [e["source"] for e in manifest["errors"]] == [str(bad)]
    assert manifest["errors"][0]["rows_read"] == failed["rows_in"]
    gz_events = [e for e in events(out) if e["source"] == str(bad)]
    assert len(gz_events) == failed["rows_ok"]
    assert {e["source"] for e in events(out)} == {str(tmp_path / "old.jsonl"), str(good), str(bad)}
    store.verify_events(out)


def test_keep_going_reads_a_truncated_gzipped_csv_up_to_its_last_whole_row(tmp_path):
    rows = "".join(f"p{i},answer {i} {'x' * 40},{i % 11}\n" for i in range(4000))  # ratings 0..10
    packed = gzip.compress(("prompt,completion,rating\n" + rows).encode())
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(packed[: len(packed) // 2])
    good = _log(tmp_path / "good.jsonl", 4, "good")
    args = ["ingest", str(good), str(bad), "--out", str(tmp_path / "out"), "--map", "label=rating"]
    args += ["--positive-at", "6", "--negative-at", "4"]
    refused = CliRunner().invoke(app, args)
    _assert_clear(refused, 2, "could not be read whole", str(bad))
    assert not (tmp_path / "out").exists()
    going = CliRunner().invoke(app, [*args, "--keep-going"])
    assert going.exit_code == 0, going.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    check_invariant(manifest)
    failed = next(e for e in manifest["sources"] if e["source"] == str(bad))
    assert failed["status"] == "failed" and "cut short, was left out" in failed["error"]
    assert 0 < failed["rows_in"] < 4000
    by_prompt = {e["prompt"]: e["label"] for e in events(tmp_path / "out") if e["source"] == str(bad)}
    assert by_prompt and all(by_prompt[f"p{i}"] == (i % 11 >= 6) for i in range(4000) if f"p{i}" in by_prompt)
    whole = {f"p{i}" for i in range(failed["rows_in"]) if i % 11 != 5}  # 5 is neutral, between 4 and 6
    assert set(by_prompt) == whole and failed["rows_quarantined"] == 0  # every whole row up to the cut


def test_an_event_log_whose_feedback_file_is_cut_short(tmp_path):
    generations = write_lines(tmp_path / "gens.jsonl", [{"id": f"g{i}", "prompt": f"P{i}", "completion": f"C{i}"}
                                                        for i in range(3000)])  # fmt: skip
    votes = "".join(json.dumps({"generation_id": f"g{i}", "user_id": f"u{i % 5}", "vote": "up"}) + "\n"
                    for i in range(3000))  # fmt: skip
    packed = gzip.compress(votes.encode())
    feedback = tmp_path / "fb.jsonl.gz"
    feedback.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ThumbsError, match="could not be read whole") as err:
        run([generations], tmp_path / "out", feedback=str(feedback))
    assert str(feedback) in err.value.message and not (tmp_path / "out").exists()
    manifest = run([generations], tmp_path / "out", feedback=str(feedback), keep_going=True)
    entry = manifest["sources"][0]
    assert entry["status"] == "failed" and str(feedback) in entry["error"]
    assert 0 < len(events(tmp_path / "out")) < 3000  # the votes before the cut


def test_keep_going_with_a_source_not_read_at_all_keeps_its_earlier_events(tmp_path):
    out, before = _good_folder(tmp_path)
    old = tmp_path / "old.jsonl"
    old.rename(tmp_path / "moved.jsonl")  # the source that made the folder is gone now
    good = _log(tmp_path / "good.jsonl", 4, "good")
    refused = CliRunner().invoke(app, ["ingest", str(old), str(good), "--out", str(out)])
    _assert_clear(refused, 2, "could not be read whole", str(old))
    assert _snapshot(out) == before
    going = CliRunner().invoke(app, ["ingest", str(old), str(good), "--out", str(out), "--keep-going"])
    assert going.exit_code == 0, going.output
    manifest = json.loads((out / "manifest.json").read_text())
    check_invariant(manifest)
    assert manifest["errors"][0]["source"] == str(old) and manifest["errors"][0]["rows_read"] == 0
    assert {e["source"] for e in events(out)} == {str(old), str(good)}


# ---- events that disagree with their manifest, or are damaged ----------------------------------------


def _flip(path: Path, at: int, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for i in range(at, at + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupt_page_is_a_clear_error_for_audit_and_train(tmp_path):
    out, _ = _good_folder(tmp_path, 2000)  # big enough that the middle of the file is a data page
    original = (out / "events.parquet").read_bytes()
    events_file = out / "events.parquet"
    _flip(events_file, events_file.stat().st_size // 2)
    audit = CliRunner().invoke(app, ["audit", str(out)])
    _assert_clear(audit, 2, "events.parquet", "damaged", "thumbs ingest")
    assert not (out / "audit.json").exists()
    with pytest.raises(ThumbsError, match="damaged") as err:
        load_examples(str(out), split="train")
    assert "thumbs ingest" in err.value.message
    # Without the manifest's record of the file only faults that stop a page decoding can be seen
    # (Parquet pages carry no checksum here): damage the header of the completion column's page.
    (out / "manifest.json").unlink()
    events_file.write_bytes(original)
    column = pq.ParquetFile(events_file).metadata.row_group(0).column(2)
    assert column.path_in_schema == "completion"
    _flip(events_file, column.data_page_offset)
    audit = CliRunner().invoke(app, ["audit", str(out / "events.parquet")])
    _assert_clear(audit, 2, "events.parquet", "a page cannot be read", "thumbs ingest")
    with pytest.raises(ThumbsError, match="a page cannot be read"):
        load_examples(str(out))


def test_events_and_manifest_that_disagree_are_refused(tmp_path):
    out, _ = _good_folder(tmp_path)
    other = tmp_path / "other"
    assert (
        CliRunner()
        .invoke(app, ["ingest", str(_log(tmp_path / "x.jsonl", 3, "x")), "--out", str(other)])
        .exit_code
        == 0
    )
    os.replace(other / "events.parquet", out / "events.parquet")  # a half-replaced folder
    audit = CliRunner().invoke(app, ["audit", str(out)])
    _assert_clear(audit, 2, "holds 3 events but manifest.json says 6", "thumbs ingest")
    with pytest.raises(ThumbsError, match="disagrees with itself"):
        load_examples(str(out))
    again = CliRunner().invoke(app, ["ingest", str(tmp_path / "old.jsonl"), "--out", str(out)])
    _assert_clear(again, 2, "disagrees with itself")  # ingest merges into it: refused too


# ---- outputs that cannot be written ------------------------------------------------------------------


def test_a_file_in_place_of_the_output_folder(tmp_path):
    log = _log(tmp_path / "a.jsonl", 3, "a")
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(app, ["ingest", str(log), "--out", str(blocker)])
    _assert_clear(result, 2, "a file stands where the output folder should be", str(blocker))
    assert blocker.read_text() == "not a folder"
    under = CliRunner().invoke(app, ["ingest", str(log), "--out", str(blocker / "sub")])
    _assert_clear(under, 2, str(blocker))
    assert len(under.output.strip().splitlines()) <= 2  # the error and its hint


def test_audit_output_that_cannot_be_written(tmp_path):
    out, _ = _good_folder(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    result = CliRunner().invoke(app, ["audit", str(out), "--out", str(blocker / "audit.json")])
    _assert_clear(result, 2, str(blocker), "a file stands where the output folder should be")
    (tmp_path / "dir.json").mkdir()
    result = CliRunner().invoke(app, ["audit", str(out), "--out", str(tmp_path / "dir.json")])
    _assert_clear(result, 2, "dir.json", "is a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_parent_folder(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        result = CliRunner().invoke(
            app, ["ingest", str(_log(tmp_path / "a.jsonl", 3, "a")), "--out", str(parent / "out")]
        )
        _assert_clear(result, 2, str(parent))
    finally:
        parent.chmod(0o700)


def test_other_files_in_the_folder_are_kept_and_a_stale_audit_is_dropped(tmp_path):
    out, _ = _good_folder(tmp_path)
    (out / "notes.txt").write_text("mine")
    (out / "extra").mkdir()
    (out / "extra" / "a.txt").write_text("also mine")
    assert CliRunner().invoke(app, ["audit", str(out)]).exit_code == 0
    assert (out / "audit.json").exists()
    result = CliRunner().invoke(
        app, ["ingest", str(_log(tmp_path / "new.jsonl", 2, "new")), "--out", str(out)]
    )
    assert result.exit_code == 0 and "audit.json removed" in result.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "extra" / "a.txt").read_text() == "also mine"
    assert not (out / "audit.json").exists()


@pytest.mark.parametrize("recorded", [True, False], ids=["in-manifest", "older-folder"])
def test_a_damaged_quarantine_stops_the_next_ingest_and_changes_nothing(tmp_path, recorded):
    """Another ingest into the folder carries the rows rejected before into its new quarantine: a
    quarantine.jsonl cut short (or edited) would lose them, or fail in DuckDB with a traceback.
    The manifest records its size and SHA-256; without that record (a folder from before it) a line
    that does not parse is the same clear error. Either way nothing in the folder changes."""
    out, _ = _good_folder(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    quarantine = out / "quarantine.jsonl"
    assert manifest["quarantine_file"]["sha256"] == store._sha256(quarantine)  # as written
    assert manifest["quarantine_file"]["bytes"] == quarantine.stat().st_size > 0
    if not recorded:
        del manifest["quarantine_file"]
        (out / "manifest.json").write_text(json.dumps(manifest))
    quarantine.write_bytes(quarantine.read_bytes()[:40])  # cut inside its first row
    before = _snapshot(out)
    new = _log(tmp_path / "new.jsonl", 4, "new")
    result = CliRunner().invoke(app, ["ingest", str(new), "--out", str(out)])
    needle = "is not the file ingest wrote" if recorded else "cannot carry the previous rejected rows over"
    _assert_clear(result, 2, "quarantine.jsonl", needle, "move it aside")
    assert _snapshot(out) == before and _leftovers(out) == []
    quarantine.unlink()  # moved aside, as the hint says: the next ingest starts a new quarantine
    again = CliRunner().invoke(app, ["ingest", str(new), "--out", str(out)])
    assert again.exit_code == 0, again.output
