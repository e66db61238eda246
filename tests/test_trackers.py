"""train.report_to: TensorBoard event files and an MLflow file store in the run folder, read back
with their own readers, hold the config, every metrics.jsonl record and the eval numbers."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.helpers import tiny_config, toy_feedback, write_jsonl
from thumbs.errors import ThumbsError
from thumbs.eval.evaluation import evaluate
from thumbs.train.loop import train


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trackers")
    data = write_jsonl(tmp / "train.jsonl", toy_feedback(24))
    cfg = tiny_config(tmp, data, train__report_to=["tensorboard", "mlflow"], train__max_steps=3)
    run = train(cfg)
    result = evaluate(run, prompts=["Review the film:", "Review the song:"], n=4, max_new_tokens=6,
                      batch_size=4, progress=False)  # fmt: skip
    return run, result


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_events_hold_every_metric_at_every_step_and_the_eval(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, result = tracked_run
    events = EventAccumulator(str(run / "tensorboard" / "thumbs"))
    events.Reload()
    records = _metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("loss", "kl", "lr", "grad_norm", "tokens_per_second", "rewards/margin"):
        logged = {e.step: e.value for e in events.Scalars(key)}
        expected = {r["step"]: r[key] for r in records if key in r}
        assert logged.keys() == expected.keys(), key
        assert all(logged[s] == pytest.approx(v, rel=1e-5) for s, v in expected.items()), key
    (win,) = events.Scalars("eval/win_rate")
    assert win.value == pytest.approx(result["win_rate"]) and win.step == 3
    assert events.Scalars("eval/kl")[0].value == pytest.approx(result["kl"]["mean"], rel=1e-5)


def test_mlflow_file_store_holds_params_metrics_and_eval_in_one_run(tracked_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what the README tells a reader to set

    run, result = tracked_run
    ids = json.loads((run / "trackers.json").read_text())
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    logged = client.get_run(ids["mlflow"]["run_id"])
    assert logged.data.params["method"] == "kto"
    assert logged.data.params["train.max_steps"] == "3"
    assert logged.data.params["kto.beta"] == "0.1"
    history = client.get_metric_history(logged.info.run_id, "loss")
    assert [m.step for m in history] == [r["step"] for r in _metrics(run)]
    assert [m.value for m in history] == pytest.approx([r["loss"] for r in _metrics(run)])
    assert logged.data.metrics["eval/win_rate"] == pytest.approx(result["win_rate"])
    assert logged.data.metrics["eval/reward_policy"] == pytest.approx(result["reward"]["policy"]["mean"])
    assert len(client.search_runs([logged.info.experiment_id])) == 1  # eval wrote into the training run


def test_a_missing_tracker_package_is_a_clear_error_before_any_model_loads(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    data = write_jsonl(tmp_path / "train.jsonl", toy_feedback(8))
    cfg = tiny_config(tmp_path, data, train__report_to=["mlflow"])
    with pytest.raises(ThumbsError, match="mlflow.*not installed") as err:
        train(cfg)
    assert "pip install mlflow-skinny" in str(err.value)
    assert not (tmp_path / "run" / "final").exists()


def test_report_to_names_only_known_trackers(tmp_path):
    with pytest.raises(ThumbsError, match="report_to"):
        tiny_config(tmp_path, tmp_path / "x.jsonl", train__report_to=["neptune"])
