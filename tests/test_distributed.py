"""Two processes (CPU, gloo) give the same training as one process with the same global batch.

Every multi-process run is launched the way a user launches it, as a subprocess: `thumbs train
--nproc 2` (torch.distributed's launcher) or `accelerate launch -m thumbs train`. The one-process
runs they are compared with run inside the test process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import tiny_config, toy_feedback, write_jsonl
from thumbs.errors import ThumbsError
from thumbs.train.batches import epoch_microbatches
from thumbs.train.distributed import launch, strip_nproc
from thumbs.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 240  # seconds, generous for a loaded machine; a hung collective fails, not stalls


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "adapter_model.safetensors")


def _run(command: list[str], cache: Path) -> subprocess.CompletedProcess:
    # a cache of its own: the processes compute the reference log-probs instead of finding them
    env = {**os.environ, "THUMBS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    # a session of its own, so that a launch past its time takes its workers with it (a plain
    # timeout kills only the launcher, and the workers wait at a barrier for ever)
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        # torch's launcher starts each worker in a session of its own: only the launcher can stop
        # them, on SIGTERM; SIGKILL to the launcher's group would leave them holding our pipes
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
        raise
    result = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
    if result.returncode not in (0, 2):
        print(result.stdout[-4000:], result.stderr[-8000:])
    return result


def thumbs_nproc(cfg, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    path = Path(cfg.output_dir).parent / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.to_yaml())
    return _run([sys.executable, "-m", "thumbs", "train", str(path), "--nproc", "2", *extra], cache)


def accelerate_launch(config: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    # the example DDP config, on CPU: Accelerate hands it to torchrun and thumbs picks gloo
    ddp = str(ROOT / "examples" / "accelerate" / "ddp.yaml")
    accelerate = ["-m", "accelerate.commands.launch", "--config_file", ddp]
    accelerate += ["--num_processes", "2", "--main_process_port", "0"]
    return _run([sys.executable, *accelerate, "-m", "thumbs", "train", str(config), *extra], cache)


def fsdp_launch(cfg, cache: Path, *extra: str, config: str = "fsdp") -> subprocess.CompletedProcess:
    """An example FSDP2 config through `accelerate launch`, on CPU: tests/fsdp_on_cpu.py keeps
    Accelerate on its FSDP code path (it would otherwise fall back to data parallelism here)."""
    path = Path(cfg.output_dir).parent / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.to_yaml())
    fsdp = str(ROOT / "examples" / "accelerate" / f"{config}.yaml")
    accelerate = ["-m", "accelerate.commands.launch", "--config_file", fsdp]
    accelerate += ["--num_processes", "2", "--main_process_port", "0"]
    entry = str(ROOT / "tests" / "fsdp_on_cpu.py")
    return _run([sys.executable, *accelerate, entry, "train", str(path), *extra], cache)


def train_here(cfg, cache: Path, monkeypatch) -> Path:
    monkeypatch.setenv("THUMBS_CACHE", str(cache))
    return train(cfg)


def _full_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "model.safetensors")


def assert_same_training(one: Path, two: Path, atol: float = 1e-5, weights=None) -> None:
    a, b = _metrics(one), _metrics(two)
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for key in ("loss", "examples", "rewards/margin", "kl", "grad_norm"):
        for x, y in zip(a, b):
            if key in x:
                assert y[key] == pytest.approx(x[key], abs=atol), (key, x["step"])
    wa, wb = (weights or _weights)(one), (weights or _weights)(two)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=atol), key


@pytest.mark.timeout(360)
def test_kto_on_two_processes_matches_one_process_with_twice_the_batch(tmp_path, monkeypatch):
    rows = toy_feedback(64, seed=4)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    common = {"train__max_steps": 5, "train__grad_accum": 2}
    one = train_here(
        tiny_config(tmp_path / "one", data, train__batch_size=4, **common), tmp_path / "c1", monkeypatch
    )
    cfg = tiny_config(tmp_path / "two", data, train__batch_size=2, **common)
    result = thumbs_nproc(cfg, tmp_path / "c2")
    assert result.returncode == 0, result.stderr[-3000:]
    two = Path(cfg.output_dir)
    assert_same_training(one, two)
    assert all(m["examples"] == 8 for m in _metrics(two))  # 2 processes x 2 examples x 2 accumulated
    # the reference was computed once, sharded over the two processes and gathered
    ref_one, ref_two = (torch.load(r / "reference_logps.pt", weights_only=True)["logps"] for r in (one, two))
    for role in ("target", "kl"):
        assert torch.allclose(ref_one[role], ref_two[role], atol=1e-4)
    # only the main process wrote the shared files
    assert result.stdout.count("thumbs: done") == 1
    assert (two / "config.yaml").exists() and (two / "data_summary.json").exists()
    # the comparison covered a step where one process held a single class and the other both
    labels = [r["label"] for r in rows]
    micro = [epoch_microbatches([0] * 64, 4, e, 0, False) for e in range(2)]
    halves = [[{labels[i] for i in b[:2]}, {labels[i] for i in b[2:]}] for e in micro for b in e][:10]
    assert any(sorted(map(len, h)) == [1, 2] for h in halves)


@pytest.mark.timeout(360)
def test_dpo_on_two_processes_matches_one_process_with_twice_the_batch(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", toy_feedback(80, seed=8))
    common = {"method": "dpo", "train__max_steps": 4, "dpo__max_pairs_per_prompt": 2}
    one = train_here(
        tiny_config(tmp_path / "one", data, train__batch_size=4, **common), tmp_path / "c1", monkeypatch
    )
    assert json.loads((one / "data_summary.json").read_text())["examples"] >= 16
    trackers = {"train__report_to": ["tensorboard", "mlflow"]}
    cfg = tiny_config(tmp_path / "two", data, train__batch_size=2, **common, **trackers)
    result = thumbs_nproc(cfg, tmp_path / "c2")
    assert result.returncode == 0, result.stderr[-3000:]
    two = Path(cfg.output_dir)
    assert_same_training(one, two)
    assert all("rewards/accuracy" in m for m in _metrics(two))
    # the trackers ran on the main process only: one event file, one MLflow run, each step once
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list((two / "tensorboard" / "thumbs").glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(two / "tensorboard" / "thumbs"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("rewards/accuracy")]
    assert logged == [(m["step"], pytest.approx(m["rewards/accuracy"])) for m in _metrics(two)]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 reads a file store only when told
    client = MlflowClient(tracking_uri=(two / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "thumbs"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]


@pytest.mark.timeout(600)
def test_one_class_microbatches_train_and_resume_under_two_processes(tmp_path):
    # one example per process: every microbatch of a process is one class, with one pair for z0;
    # mostly thumbs-up, so often one process holds an up and the other a down, or both the same class
    rows = toy_feedback(40, seed=9, p_up=0.8)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    common = {"train__batch_size": 1, "train__max_steps": 6, "train__save_every": 3}
    common |= {"model__lora__dropout": 0.1, "kto__desirable_weight": 1.0, "kto__undesirable_weight": 1.0}
    cfg = tiny_config(tmp_path / "full", data, **common)
    result = thumbs_nproc(cfg, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    full = Path(cfg.output_dir)
    metrics = _metrics(full)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    for record in metrics:
        assert all(torch.isfinite(torch.tensor(float(record[k]))) for k in ("loss", "kl", "grad_norm"))
        assert record["grad_norm"] > 0 and record["examples"] == 2
    assert sorted(p.name for p in (full / "checkpoints" / "step-3").iterdir()) == [
        "rng-0.pt",
        "rng-1.pt",
        "state.pt",
    ]

    # a run that stopped after its step-3 checkpoint, resumed through `accelerate launch`
    stopped = tmp_path / "stopped" / "run"
    shutil.copytree(full, stopped, ignore=shutil.ignore_patterns("final"))
    result = accelerate_launch(
        full.parent / "config.yaml", tmp_path / "cache", "-o", str(stopped), "--resume"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming at step 3" in result.stdout
    resumed = _metrics(stopped)
    assert [m["step"] for m in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(metrics, resumed):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
    wa, wb = _weights(full), _weights(stopped)
    for key in wa:  # dropout is on: this holds only if every process got its own RNG state back
        assert torch.allclose(wa[key], wb[key], atol=1e-6), key


@pytest.mark.timeout(600)
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_fsdp2_on_two_processes_matches_one_process_and_resumes(tmp_path, monkeypatch, lora):
    # the parameters (and the optimizer state) are sharded over the two processes: training, the
    # checkpoint (gathered from the shards) and the final model (gathered, saved once) must not show it
    data = write_jsonl(tmp_path / "d.jsonl", toy_feedback(64, seed=4))
    common = {"train__max_steps": 4, "train__grad_accum": 2, "train__save_every": 2}
    common |= {"model__lora__enabled": lora, "model__gradient_checkpointing": not lora}
    if not lora:  # full fine-tuning: every weight (the tied embedding too) is sharded
        common["train__learning_rate"] = 1e-4
    one = train_here(
        tiny_config(tmp_path / "one", data, train__batch_size=4, **common), tmp_path / "c1", monkeypatch
    )
    cfg = tiny_config(tmp_path / "two", data, train__batch_size=2, **common)
    config = "fsdp" if lora else "fsdp-zero2"  # parameters resharded after forward, or kept until backward
    result = fsdp_launch(cfg, tmp_path / "c2", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 process(es), FSDP2" in result.stdout and result.stdout.count("thumbs: done") == 1
    two = Path(cfg.output_dir)
    weights = _weights if lora else _full_weights
    assert_same_training(one, two, weights=weights)

    # stopped after the step-2 checkpoint, resumed: its shards come back from the gathered file
    stopped = tmp_path / "stopped" / "run"
    shutil.copytree(two, stopped, ignore=shutil.ignore_patterns("final", "step-4"))
    result = fsdp_launch(cfg, tmp_path / "c2", "-o", str(stopped), "--resume", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming at step 2" in result.stdout
    assert_same_training(two, stopped, atol=1e-6, weights=weights)


def test_deepspeed_and_fsdp1_stop_with_what_to_use_instead(tmp_path):
    from types import SimpleNamespace

    from thumbs.train.setup import check_sharding

    def accel(kind, version=2):
        plugin = SimpleNamespace(fsdp_version=version)
        return SimpleNamespace(
            distributed_type=SimpleNamespace(value=kind), state=SimpleNamespace(fsdp_plugin=plugin)
        )

    with pytest.raises(ThumbsError, match="DeepSpeed") as err:
        check_sharding(accel("DEEPSPEED"))
    assert "fsdp.yaml" in err.value.hint
    with pytest.raises(ThumbsError, match="FSDP2 only") as err:
        check_sharding(accel("FSDP", version=1))
    assert "fsdp_version: 2" in err.value.hint
    for kind in ("NO", "MULTI_CPU", "MULTI_GPU", "FSDP"):
        check_sharding(accel(kind))


@pytest.mark.timeout(300)
def test_an_error_on_every_process_exits_with_the_message_not_a_hang(tmp_path):
    rows = [r for r in toy_feedback(30, seed=2) if r["label"]]  # no thumbs-down: DPO has no pairs
    cfg = tiny_config(tmp_path, write_jsonl(tmp_path / "up.jsonl", rows), method="dpo")
    result = thumbs_nproc(cfg, tmp_path / "cache")
    assert result.returncode == 2
    assert "DPO found no pairs" in result.stderr


def test_launched_processes_do_not_launch_again(monkeypatch):
    argv = ["train", "c.yaml", "--nproc", "2", "--set", "train.max_steps=3", "--nproc=4", "--resume"]
    assert strip_nproc(argv) == ["train", "c.yaml", "--set", "train.max_steps=3", "--resume"]
    monkeypatch.setenv("LOCAL_RANK", "0")  # as under accelerate launch or torchrun
    with pytest.raises(ThumbsError, match="drop --nproc"):
        launch(2, argv)


def test_example_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for path in sorted((ROOT / "examples" / "accelerate").glob("*.yaml")):
        config = load_config_from_file(str(path))
        kinds[path.stem] = (config.distributed_type.value, config.num_machines)
    assert kinds == {
        "ddp": ("MULTI_GPU", 1),
        "ddp-2-nodes": ("MULTI_GPU", 2),
        "deepspeed-zero2": ("DEEPSPEED", 1),
        "deepspeed-zero3": ("DEEPSPEED", 1),
        "fsdp": ("FSDP", 1),
        "fsdp-zero2": ("FSDP", 1),
    }


def test_fsdp_wraps_each_decoder_layer_without_a_class_name_in_the_config():
    # Accelerate's transformer-based wrapping reads `_no_split_modules` from the module it prepares,
    # which is thumbs' CompletionLogps wrapper, not the model: the wrapper must pass the list on
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from peft import LoraConfig, get_peft_model

    from thumbs.models import tiny_model, tiny_tokenizer
    from thumbs.train.logprobs import CompletionLogps

    model = tiny_model(tiny_tokenizer(), hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    for candidate in (model, get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))):
        wrapped = CompletionLogps(candidate)
        policy = fsdp2_prepare_auto_wrap_policy(plugin, wrapped)
        units = [type(m).__name__ for m in wrapped.modules() if policy(m)]
        assert units == ["LlamaDecoderLayer", "LlamaDecoderLayer"]
