"""Faults a hostile or unlucky user meets in training: each ends in a clear one-line error (exit 2)
or a correct result, never exit 0 with a broken model, and the previous good state stays intact."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import tiny_config, toy_feedback, write_jsonl
from thumbs.cli import app
from thumbs.train import checkpoint as checkpoint_module
from thumbs.train.loop import train
from thumbs.train.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, data: Path, **overrides) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(tiny_config(tmp_path, data, **overrides).to_yaml())
    return path


def _cli(*args: str):
    result = CliRunner().invoke(app, ["train", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


def _error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    for needle in needles:
        assert needle in result.output, result.output
    return result.output


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "final" / "adapter_model.safetensors")


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "d.jsonl", toy_feedback(48, seed=5))


# ---- every number that reaches the loss is finite -------------------------------------------------


@pytest.mark.parametrize(
    "setting, key",
    [
        ("kto.desirable_weight=nan", "kto.desirable_weight"),
        ("kto.undesirable_weight=.nan", "kto.undesirable_weight"),
        ("train.learning_rate=.inf", "train.learning_rate"),
        ("kto.beta=inf", "kto.beta"),
        ("train.max_grad_norm=-1", "train.max_grad_norm"),
        ("train.max_grad_norm=0", "train.max_grad_norm"),
    ],
)
def test_non_finite_or_negative_config_numbers_are_refused_naming_the_key(tmp_path, data, setting, key):
    result = _cli(_config(tmp_path, data), "--set", setting)
    _error(result, f"'{key}'", "invalid config")
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_a_non_finite_weight_in_the_data_is_an_error_with_file_row_and_field(tmp_path, bad):
    rows = toy_feedback(12, seed=1)
    for i, row in enumerate(rows):
        row["weight"] = bad if i == 6 else 1.0
    data = write_jsonl(tmp_path / "w.jsonl", rows)  # json writes NaN / Infinity, and reads them back
    _error(_cli(_config(tmp_path, data)), str(data), "row 7", "field 'weight'")
    assert not (tmp_path / "run" / "final").exists()


def test_a_nan_weight_in_parquet_is_an_error_too(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = toy_feedback(12, seed=1)
    table = pa.table({"prompt": [json.dumps(r["prompt"]) for r in rows],
                      "completion": [r["completion"] for r in rows], "label": [r["label"] for r in rows],
                      "weight": [1.0] * 3 + [math.nan] + [1.0] * 8})  # fmt: skip
    pq.write_table(table, tmp_path / "w.parquet")
    _error(_cli(_config(tmp_path, tmp_path / "w.parquet")), "w.parquet", "row 4", "field 'weight'")


def _nan_loss_at(monkeypatch, calls: set[int]):
    """Make the KTO loss NaN on the given microbatch calls (1-based), as a diverging run would."""
    real, count = METHODS["kto"].loss, [0]

    def loss(*args, **kwargs):
        losses, metrics = real(*args, **kwargs)
        count[0] += 1
        return (losses * math.nan if count[0] in calls else losses), metrics

    monkeypatch.setattr(METHODS["kto"], "loss", loss)


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint(
    tmp_path, data, monkeypatch
):
    _nan_loss_at(monkeypatch, {5})
    result = _cli(_config(tmp_path, data, train__max_steps=8, train__save_every=2))
    out = _error(
        result, "training stopped at step 5", "non-finite loss", "examples [", "step-4", "completion: 'The "
    )
    run = tmp_path / "run"
    assert not (run / "final").exists()
    assert checkpoint_module.complete_checkpoints(run) == [2, 4]
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3, 4]  # nothing logged from the bad step
    state = torch.load(run / "checkpoints" / "step-4" / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values()), out
    monkeypatch.undo()  # the cause is gone: the run resumes from its last good checkpoint
    assert _cli(_config(tmp_path, data, train__max_steps=8, train__save_every=2), "--resume").exit_code == 0
    assert [m["step"] for m in _metrics(run)] == list(range(1, 9))


def test_skip_nonfinite_steps_skips_bad_steps_counts_them_and_stops_past_the_limit(
    tmp_path, data, monkeypatch
):
    _nan_loss_at(monkeypatch, {2, 4})
    run = train(tiny_config(tmp_path / "a", data, train__max_steps=6, train__skip_nonfinite_steps=2))
    metrics = _metrics(run)
    assert [m["skipped_steps"] for m in metrics] == [0, 1, 0, 1, 0, 0]
    assert "loss" not in metrics[1] and all(math.isfinite(m["loss"]) for m in metrics if "loss" in m)
    assert all(torch.isfinite(w).all() for w in _weights(run).values())

    _nan_loss_at(monkeypatch, {1, 2, 3})
    result = _cli(_config(tmp_path / "b", data, train__max_steps=6, train__skip_nonfinite_steps=2))
    _error(result, "training stopped at step 3", "3 bad steps, train.skip_nonfinite_steps allows 2")
    assert not (tmp_path / "b" / "run" / "final").exists()


# ---- one process per run folder; another run's leftovers are never mixed in -----------------------

BLOCKED = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import thumbs.train.loop as loop
    release, real = Path(sys.argv[1]), loop.train_step
    def waiting(*args):  # hold the run inside its first step until the test says go
        print("\\nheld-in-first-step", flush=True)
        deadline = time.time() + 600
        while not release.exists() and time.time() < deadline:
            time.sleep(0.05)
        return real(*args)
    loop.train_step = waiting
    from thumbs.cli import app
    app(sys.argv[2:])
    """
)


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def _thumbs(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "thumbs", *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=timeout)  # fmt: skip


def test_two_trainings_into_one_folder_the_second_is_refused_the_first_completes(tmp_path, data):
    config = _config(tmp_path, data, train__max_steps=3)
    release = tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", BLOCKED, str(release), "train", str(config)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())  # fmt: skip
    try:
        for line in first.stdout:  # the first holds the folder and is training
            if "held-in-first-step" in line:
                break
        second = _thumbs("train", config, "--overwrite")
        assert second.returncode == 2, second.stderr
        assert "in use by another thumbs command" in second.stderr and "thumbs train" in second.stderr
        assert "Traceback" not in second.stderr
        assert len(second.stderr.strip().splitlines()) <= 2  # the error and its hint
        release.touch()
        rest = first.stdout.read()
        assert first.wait(timeout=300) == 0, rest
    finally:
        first.kill()
    run = tmp_path / "run"
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3]
    assert (run / "final" / "adapter_model.safetensors").exists()


def test_a_killed_run_leaves_a_folder_that_is_refused_then_resumed_or_overwritten(tmp_path, data):
    config = _config(tmp_path, data, train__max_steps=3)
    first = subprocess.Popen([sys.executable, "-c", BLOCKED, str(tmp_path / "never"), "train", str(config)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())  # fmt: skip
    for line in first.stdout:
        if "held-in-first-step" in line:
            break
    first.kill()  # kill -9 inside the first step: the lock goes with the process
    first.wait()
    run = tmp_path / "run"
    assert (run / "reference_logps.pt").exists() and not (run / "final").exists()
    _error(_cli(config), "holds another run's files", "reference_logps.pt", "--resume", "--overwrite")
    assert _cli(config, "--resume").exit_code == 0  # no checkpoint yet: the same run from step 0
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3]
    _error(_cli(config), "already holds a finished run")


def test_overwrite_clears_the_old_runs_files_and_trains_afresh(tmp_path, data, monkeypatch):
    old = _config(tmp_path, data, train__max_steps=8, train__save_every=2)
    _nan_loss_at(monkeypatch, {7})
    _error(_cli(old), "step 7")  # an old run left checkpoints 4 and 6
    monkeypatch.undo()
    grown = write_jsonl(tmp_path / "more.jsonl", toy_feedback(80, seed=9))
    new = _config(tmp_path, grown, train__max_steps=3)
    _error(_cli(new), "holds another run's files", "checkpoints")
    _error(_cli(new, "--resume"), "not the run in the folder", "training examples", "data.train")
    assert _cli(new, "--overwrite").exit_code == 0
    run = tmp_path / "run"
    assert checkpoint_module.complete_checkpoints(run) == []  # the old run's are gone, not resumable later
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3]
    clean = train(tiny_config(tmp_path / "clean", grown, train__max_steps=3))
    for key, value in _weights(clean).items():  # the same as in an empty folder: nothing of the old run
        assert torch.equal(value, _weights(run)[key]), key


def test_reference_log_probs_of_other_data_in_the_folder_are_not_used(tmp_path):
    small = write_jsonl(tmp_path / "small.jsonl", toy_feedback(16, seed=1))
    grown = write_jsonl(tmp_path / "grown.jsonl", toy_feedback(64, seed=2))
    stale = train(tiny_config(tmp_path / "old", small, train__max_steps=1))
    reference = tiny_config(tmp_path / "ref", grown, train__max_steps=4)
    expected = _metrics(train(reference))
    target = tmp_path / "new" / "run"
    target.mkdir(parents=True)
    (target / "reference_logps.pt").write_bytes((stale / "reference_logps.pt").read_bytes())
    # --resume with no checkpoint and no config: only the stale reference file is there
    run = train(tiny_config(tmp_path / "new", grown, train__max_steps=4), resume=True)
    got = _metrics(run)  # not an IndexError, and not another KL: the same run as in a clean folder
    assert [m["loss"] for m in got] == [m["loss"] for m in expected]
    assert [m["kl"] for m in got] == [m["kl"] for m in expected]


# ---- --resume falls back past broken checkpoints ---------------------------------------------------


def _run_with_checkpoints(tmp_path, data):
    config = _config(
        tmp_path,
        data,
        train__max_steps=6,
        train__save_every=2,
        train__save_total_limit=3,
        model__lora__dropout=0.1,
    )  # fmt: skip  (dropout: the random state must resume too)
    assert _cli(config).exit_code == 0
    run = tmp_path / "run"
    assert checkpoint_module.complete_checkpoints(run) == [2, 4]
    return config, run, _weights(run)


@pytest.mark.parametrize("fault", ["truncated", "zero-byte", "no-rng", "code"])
def test_resume_skips_a_broken_latest_checkpoint_and_resumes_from_the_one_before(tmp_path, data, fault):
    import shutil

    config, run, expected = _run_with_checkpoints(tmp_path, data)
    shutil.rmtree(run / "final")
    latest = run / "checkpoints" / "step-4"
    state = latest / "state.pt"
    marker = tmp_path / "executed"
    if fault == "truncated":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif fault == "zero-byte":
        state.write_bytes(b"")
    elif fault == "no-rng":
        (latest / "rng-0.pt").unlink()
    else:  # a checkpoint from elsewhere that would run code when unpickled
        torch.save({"step": 4, "model": {}, "optimizer": None, "scheduler": _Evil(marker)}, state)
    result = _cli(config, "--resume")
    assert result.exit_code == 0, result.output
    assert "skipping checkpoint" in result.output and "step-4" in result.output
    assert "resuming at step 2" in result.output
    assert not marker.exists()
    for key, value in _weights(run).items():  # steps 3-6 again from step 2: the same model
        assert torch.allclose(value, expected[key], atol=1e-6), key
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3, 4, 5, 6]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_with_no_checkpoint_that_loads_is_a_clear_error(tmp_path, data):
    config, run, _ = _run_with_checkpoints(tmp_path, data)
    for step in (2, 4):
        (run / "checkpoints" / f"step-{step}" / "state.pt").write_bytes(b"PK\x03\x04 cut")
    _error(_cli(config, "--resume"), "no checkpoint of the run loads", "step-4 (", "step-2 (", "--overwrite")
    assert (run / "final").exists()  # the finished model is untouched


def test_checkpoints_load_with_weights_only_rng_states_included(tmp_path, data):
    _, run, _ = _run_with_checkpoints(tmp_path, data)
    for name in ("state.pt", "rng-0.pt"):
        torch.load(run / "checkpoints" / "step-4" / name, weights_only=True)  # raises on any other object
    saved = torch.load(run / "reference_logps.pt", weights_only=True)
    assert set(saved) == {"fingerprint", "logps"}


# ---- one-line errors where tracebacks were -----------------------------------------------------------


def test_a_file_where_the_run_folder_or_its_parent_should_be(tmp_path, data):
    (tmp_path / "run").write_text("not a folder")
    _error(_cli(_config(tmp_path, data)), "a file stands where the output folder should be")
    _error(_cli(_config(tmp_path, data), "-o", tmp_path / "run" / "sub"), "a file stands where")


def test_an_unwritable_output_folder(tmp_path, data):
    _error(_cli(_config(tmp_path, data), "-o", "/proc/thumbs-run"), "/proc/", "choose")


def test_checkpoints_being_a_file_fails_before_training(tmp_path, data):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("oops")
    out = _error(_cli(_config(tmp_path, data, train__save_every=1), "--resume"), "'checkpoints'", "is a file")
    assert not (run / "metrics.jsonl").exists(), out  # stopped before the first step


def test_a_cut_last_line_of_metrics_is_dropped_on_resume(tmp_path, data, monkeypatch):
    config = _config(tmp_path, data, train__max_steps=6, train__save_every=2)
    _nan_loss_at(monkeypatch, {5})
    _error(_cli(config), "step 5")
    monkeypatch.undo()
    metrics = tmp_path / "run" / "metrics.jsonl"
    with metrics.open("a") as handle:
        handle.write('{"step": 5, "loss": 0.4')  # killed mid-write
    result = _cli(config, "--resume")
    assert result.exit_code == 0, result.output
    assert "dropped 1 unreadable line" in result.output
    assert [m["step"] for m in _metrics(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]


# ---- the same config and seed give the same run ----------------------------------------------------


@pytest.mark.parametrize("method", ["kto", "dpo"])
def test_the_same_config_and_seed_give_identical_metrics_and_weights(tmp_path, method):
    """Two runs in one process: the second finds the first's reference log-probs in the cache (warm),
    the first computed them (cold); seeded sampling (data.limit), dropout and accumulation included."""
    data = write_jsonl(tmp_path / "d.jsonl", toy_feedback(64, seed=4))
    runs = []
    for name in ("a", "b"):
        cfg = tiny_config(tmp_path / name, data, method=method, train__max_steps=5, data__limit=40,
                          model__lora__dropout=0.1, train__grad_accum=2)  # fmt: skip
        runs.append(train(cfg))
    timing = {"tokens_per_second"}
    a, b = ([{k: v for k, v in m.items() if k not in timing} for m in _metrics(r)] for r in runs)
    assert a == b
    wa, wb = _weights(runs[0]), _weights(runs[1])
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


HOLD = textwrap.dedent(
    """
    import sys, time
    from thumbs.folders import owned
    with owned(sys.argv[1], "test-holder"):
        print("held", flush=True)
        time.sleep(600)
    """
)


@pytest.mark.timeout(300)
def test_under_two_processes_a_folder_in_use_stops_every_process_with_the_message(tmp_path, data):
    config = _config(tmp_path, data)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE,
                              text=True, env=_env())  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        result = _thumbs("train", config, "--nproc", "2", timeout=240)  # only the main process locks
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2, result.stderr[-3000:]
    assert "in use by another thumbs command (pid=" in result.stderr and "test-holder" in result.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_the_same_config_and_seed_in_another_process_give_the_same_run(tmp_path):
    """In this process, then as ``thumbs train`` in a fresh one with another hash seed and its own
    cache: nothing outside the config and seed (set order, a warm cache) changes the run."""
    data = write_jsonl(tmp_path / "d.jsonl", toy_feedback(64, seed=4))
    here = train(
        tiny_config(tmp_path / "here", data, train__max_steps=4, data__limit=40, model__lora__dropout=0.1)
    )
    config = _config(tmp_path / "there", data, train__max_steps=4, data__limit=40, model__lora__dropout=0.1)
    env = {**_env(), "PYTHONHASHSEED": "12345", "THUMBS_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "thumbs", "train", str(config)], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    there = tmp_path / "there" / "run"
    drop = lambda ms: [{k: v for k, v in m.items() if k != "tokens_per_second"} for m in ms]  # noqa: E731
    assert drop(_metrics(here)) == drop(_metrics(there))
    wa, wb = _weights(here), _weights(there)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


NAN_ON_RANK_1 = textwrap.dedent(
    """
    import math, os, sys
    from thumbs.train.methods import METHODS
    real, calls = METHODS["kto"].loss, [0]
    def loss(*args, **kwargs):  # the third microbatch of process 1 only turns NaN
        losses, metrics = real(*args, **kwargs)
        calls[0] += 1
        return (losses * math.nan if os.environ["RANK"] == "1" and calls[0] == 3 else losses), metrics
    METHODS["kto"].loss = loss
    from thumbs.cli import app
    app(sys.argv[1:])
    """
)


@pytest.mark.timeout(300)
def test_under_two_processes_a_nan_loss_on_one_stops_both_at_the_same_step(tmp_path, data):
    config = _config(tmp_path, data, train__batch_size=2, train__max_steps=6, train__save_every=2)
    entry = tmp_path / "entry.py"
    entry.write_text(NAN_ON_RANK_1)
    accelerate = ["-m", "accelerate.commands.launch", "--config_file", str(ROOT / "examples" / "accelerate" / "ddp.yaml"),
                  "--num_processes", "2", "--main_process_port", "0"]  # fmt: skip
    result = subprocess.run([sys.executable, *accelerate, str(entry), "train", str(config)], capture_output=True,
                            text=True, env={**_env(), "THUMBS_CACHE": str(tmp_path / "cache")}, timeout=240)  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.count("training stopped at step 3") == 2, result.stderr[
        -3000:
    ]  # each process says it
    assert "non-finite loss (microbatch 0" in result.stderr and "on another process" in result.stderr
    run = tmp_path / "run"
    assert not (run / "final").exists() and checkpoint_module.complete_checkpoints(run) == [2]
    assert [m["step"] for m in _metrics(run)] == [1, 2]
