"""Faults injected into `thumbs eval`: a judge that returns NaN, inf or text, an output that cannot
be written, a run folder another command holds, Ctrl-C. Each is a clear error with its exit code,
and the eval.json already there is left as it was."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.test_eval import make_run, write_events
from thumbs.cli import app
from thumbs.models import save_tiny

EARLIER = '{"win_rate": 0.5, "note": "an earlier, good evaluation"}\n'
JUDGES = textwrap.dedent(
    """
    calls = []
    def nan_for_policy(prompt, completion):
        calls.append(1)
        return float("nan") if len(calls) == 2 else 0.5
    def inf_for_reference(prompt, completion):  # eval scores the 4 policy samples, then the reference's
        calls.append(1)
        return float("inf") if len(calls) == 4 + 3 else 0.5
    def text(prompt, completion):
        return "0.5"
    def half(prompt, completion):
        return 0.5
    def interrupted(prompt, completion):
        raise KeyboardInterrupt
    """
)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval-faults")
    save_tiny(root / "start", seed=0)
    write_events(root / "events.parquet")
    (root / "judges.py").write_text(JUDGES)
    return make_run(root, "run", root / "start", scale=0.1)


def _eval(run: Path, judge: str, *extra: str):
    judges = run.parent / "judges.py"
    args = ["eval", str(run), "--judge", f"python:{judges}:{judge}", "--n", "4", "--max-new-tokens", "6"]
    return CliRunner().invoke(app, [*args, "--batch-size", "4", *extra])


@pytest.fixture
def earlier(run) -> Path:
    (run / "eval.json").write_text(EARLIER)
    return run / "eval.json"


def _assert_clear(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_a_judge_that_returns_nan_is_an_error_naming_it_and_the_sample(run, earlier):
    result = _eval(run, "nan_for_policy")
    _assert_clear(result, 2, "nan_for_policy", "for the policy's sample 1", "nan", "no result was written")
    assert earlier.read_text() == EARLIER


def test_a_judge_that_returns_inf_for_a_reference_sample(run, earlier):
    result = _eval(run, "inf_for_reference")
    _assert_clear(result, 2, "inf_for_reference", "for the reference's sample 2", "inf")
    assert earlier.read_text() == EARLIER


def test_a_judge_that_returns_text_is_not_a_number(run, earlier):
    result = _eval(run, "text")
    _assert_clear(result, 2, "returned '0.5' for sample 0, not a number")
    assert earlier.read_text() == EARLIER


def test_ctrl_c_during_eval_is_exit_130_and_leaves_eval_json(run, earlier):
    result = _eval(run, "interrupted")
    _assert_clear(result, 130, "interrupted")
    assert earlier.read_text() == EARLIER


def test_an_output_that_cannot_be_written(run, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    under_file = _eval(run, "half", "--out", str(blocker / "eval.json"))
    _assert_clear(under_file, 2, str(blocker), "a file stands where the output folder should be")
    (tmp_path / "folder.json").mkdir()
    on_folder = _eval(run, "half", "--out", str(tmp_path / "folder.json"))
    _assert_clear(on_folder, 2, "folder.json", "is a folder")
    written = _eval(run, "half", "--out", str(tmp_path / "ok" / "eval.json"))
    assert written.exit_code == 0, written.output
    assert [p.name for p in (tmp_path / "ok").iterdir()] == ["eval.json"]  # written beside, then renamed


HOLD = textwrap.dedent(
    """
    import sys, time
    from thumbs.folders import owned
    with owned(sys.argv[1], "thumbs train"):
        print("held", flush=True)
        time.sleep(60)
    """
)


def test_a_run_folder_in_use_is_refused_at_once(run, earlier):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = _eval(run, "text")
        _assert_clear(result, 2, "in use by another thumbs command", "thumbs train")
    finally:
        holder.kill()
        holder.wait()
    assert earlier.read_text() == EARLIER


def test_a_head_to_head_into_a_run_folder_in_use_is_refused_at_once(run, tmp_path):
    """`thumbs eval A --against B` writes into A's run folder: a run still training there (or any
    other command holding it) stops it before a model loads, and nothing is written."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = _eval(run, "text", "--against", str(run))
        _assert_clear(result, 2, "in use by another thumbs command", "thumbs train")
    finally:
        holder.kill()
        holder.wait()
    assert not (run / f"versus-{run.name}.json").exists()
