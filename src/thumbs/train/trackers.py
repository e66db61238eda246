"""Experiment trackers (``train.report_to``) through Accelerate's tracker integration.

The run logs to each tracker named: the resolved config as hyperparameters, every record of
``metrics.jsonl`` at its step, and, when ``thumbs eval`` runs on the run, the eval numbers into
the same tracker run. Everything stays in the run folder and works offline:

- ``tensorboard``: event files under ``RUN/tensorboard/thumbs/``;
- ``mlflow``: a file store at ``RUN/mlruns`` (unless ``MLFLOW_TRACKING_URI`` names another);
- ``wandb``: offline mode in ``RUN/wandb`` unless ``WANDB_MODE`` says otherwise;
- ``trackio``: its own local store (``trackio show`` reads it).

Only the main process logs (Accelerate's trackers run there alone). ``RUN/trackers.json`` keeps
the ids that let ``thumbs eval`` and ``--resume`` write into the same tracker runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from thumbs.errors import ThumbsError

PROJECT = "thumbs"
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny", "wandb": "wandb", "trackio": "trackio"}
IDS = "trackers.json"


def accelerator_options(cfg, run_dir: Path) -> dict:
    """``Accelerator(**these)``: the trackers to log with, each package checked first."""
    names = list(dict.fromkeys(cfg.train.report_to))
    if not names:
        return {}
    check_installed(names)
    from accelerate.utils import ProjectConfiguration

    folder = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard"))
    return {"log_with": names, "project_config": folder}


def check_installed(names: list[str]) -> None:
    import importlib.util

    for name in names:
        module = "torch.utils.tensorboard" if name == "tensorboard" else name
        found = importlib.util.find_spec(name) is not None
        if found and name == "tensorboard":
            found = importlib.util.find_spec(module) is not None
        if not found:
            raise ThumbsError(
                f"train.report_to names '{name}', but its package is not installed",
                field="train.report_to",
                hint=f"pip install {PACKAGES[name]} (or `pip install thumbs[trackers]`), or drop it from report_to",
            )


def start(accelerator, cfg, run_dir: Path, *, resumed_at: int = 0) -> None:
    """Open the tracker runs (every process calls this; only the main one writes)."""
    if not cfg.train.report_to:
        return
    ids = _read_ids(run_dir)
    kwargs = _init_kwargs(cfg.train.report_to, run_dir, ids)
    if resumed_at and "tensorboard" in kwargs:
        kwargs["tensorboard"]["purge_step"] = resumed_at + 1  # steps after the checkpoint come again
    accelerator.init_trackers(PROJECT, config=hyperparameters(cfg), init_kwargs=kwargs)
    if accelerator.is_main_process:
        _write_ids(run_dir, ids | _ids_of(accelerator.trackers))


def hyperparameters(cfg) -> dict:
    """The resolved config as flat ``section.key`` values of the types every tracker takes."""
    flat: dict = {}

    def walk(prefix: str, node) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(name + ".", value)
            elif isinstance(value, (bool, int, float, str)):
                flat[name] = value
            else:  # None, lists, empty sections
                flat[name] = json.dumps(value)

    walk("", cfg.model_dump(mode="json"))
    return flat


def log_eval(run_dir: str | Path, result: dict) -> list[str]:
    """The numbers of an evaluation, into the run's own tracker runs; the trackers written to."""
    from thumbs.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        return []
    names = list(dict.fromkeys(load_config(run_dir / "config.yaml").train.report_to))
    if not names:
        return []
    check_installed(names)
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    ids = _read_ids(run_dir)
    kwargs = _init_kwargs(names, run_dir, ids)
    values, step = eval_numbers(result), _last_step(run_dir)
    for name in names:
        tracker_class = LOGGER_TYPE_TO_CLASS[name]
        if tracker_class.requires_logging_directory:
            tracker = tracker_class(PROJECT, str(run_dir / "tensorboard"), **kwargs.get(name, {}))
        else:
            tracker = tracker_class(PROJECT, **kwargs.get(name, {}))
        tracker.start()
        tracker.log(values, step=step)
        tracker.finish()
    return names


def eval_numbers(result: dict) -> dict:
    """``eval.json`` as scalar metrics under ``eval/``."""
    numbers = {
        "eval/win_rate": result.get("win_rate"),
        "eval/win_rate_low": (result.get("win_rate_ci") or [None, None])[0],
        "eval/win_rate_high": (result.get("win_rate_ci") or [None, None])[1],
        "eval/reward_policy": (result.get("reward") or {}).get("policy", {}).get("mean"),
        "eval/reward_reference": (result.get("reward") or {}).get("reference", {}).get("mean"),
        "eval/kl": (result.get("kl") or {}).get("mean"),
        "eval/length_policy": (result.get("length") or {}).get("policy"),
        "eval/length_reference": (result.get("length") or {}).get("reference"),
        "eval/heldout_auc": result.get("heldout_auc"),
        "eval/n": result.get("n"),
    }
    return {k: float(v) for k, v in numbers.items() if isinstance(v, (int, float))}


def _init_kwargs(names, run_dir: Path, ids: dict) -> dict:
    """Per-tracker options that keep each one in the run folder, offline, and in the same run."""
    kwargs: dict = {}
    if "tensorboard" in names:
        kwargs["tensorboard"] = {}
    if "mlflow" in names:
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store needs no server
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # ... and sends nothing out
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        run_id = ids.get("mlflow", {}).get("run_id")
        kwargs["mlflow"] = {"run_id": run_id} if run_id else {"run_name": run_dir.name}
    if "wandb" in names:
        kwargs["wandb"] = {"dir": str(run_dir), "name": run_dir.name, "resume": "allow"}
        kwargs["wandb"] |= {"mode": os.environ.get("WANDB_MODE", "offline")}
        if ids.get("wandb", {}).get("id"):
            kwargs["wandb"]["id"] = ids["wandb"]["id"]
    if "trackio" in names:
        kwargs["trackio"] = {"name": ids.get("trackio", {}).get("name", run_dir.name), "resume": "allow"}
    return kwargs


def _ids_of(trackers) -> dict:
    ids = {}
    for tracker in trackers:
        if tracker.name == "mlflow":
            import mlflow

            ids["mlflow"] = {"run_id": tracker.tracker.info.run_id, "tracking_uri": mlflow.get_tracking_uri()}
        elif tracker.name == "wandb":
            ids["wandb"] = {"id": tracker.tracker.id}
        elif tracker.name == "trackio":
            ids["trackio"] = {"name": getattr(tracker.tracker, "name", None)}
        elif tracker.name == "tensorboard":
            ids["tensorboard"] = {"logdir": str(tracker.logging_dir)}
    return ids


def _read_ids(run_dir: Path) -> dict:
    path = run_dir / IDS
    return json.loads(path.read_text()) if path.exists() else {}


def _write_ids(run_dir: Path, ids: dict) -> None:
    from thumbs.folders import write_text

    write_text(run_dir / IDS, json.dumps(ids, indent=2) + "\n")


def _last_step(run_dir: Path) -> int | None:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["step"] if lines else None
