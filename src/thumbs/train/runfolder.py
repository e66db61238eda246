"""A run folder holds one run: owned by one training at a time, never mixed with another run's files.

``claim`` takes the folder for the whole of ``train`` (an OS lock through ``thumbs.folders.owned``,
on the main process only) and refuses a folder that holds another run's files unless the user said
``--resume`` (continue it) or ``--overwrite`` (clear them first). ``record`` is what a checkpoint
keeps of the run it belongs to, and ``differences`` what ``--resume`` checks against it.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path

from thumbs.errors import ThumbsError
from thumbs.folders import make_dir, owned

# What a training run writes into its folder (eval.json: an evaluation of that run's model; the
# rest of the second line: train.report_to's trackers, thumbs.train.trackers).
RUN_FILES = ("config.yaml", "metrics.jsonl", "data_summary.json", "reference_logps.pt", "checkpoints",
             "final", ".tmp-final", "base_model", "eval.json",
             "trackers.json", "tensorboard", "mlruns", "wandb")  # fmt: skip

# Keys that may change between a run and its resumption: where it goes, how long, how often it logs.
RESUMABLE = {"output_dir", "train.max_steps", "train.epochs", "train.log_every", "train.save_every",
             "train.save_total_limit", "train.skip_nonfinite_steps"}  # fmt: skip


def claim(accelerator, run_dir: Path, hold: ExitStack, *, resume: bool, overwrite: bool) -> None:
    """Own ``run_dir`` until ``hold`` closes, create it, and check (or clear) what it holds.

    Only the main process locks and looks; an error it meets is raised on every process after the
    same collective, so none is left waiting for the others.
    """
    message = None
    if accelerator.is_main_process:
        try:
            hold.enter_context(owned(run_dir, "thumbs train"))
            make_dir(run_dir)
            _check(run_dir, resume=resume, overwrite=overwrite)
        except ThumbsError as err:
            if accelerator.num_processes == 1:
                raise
            message = err
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        text = broadcast_object_list([message.message if message else None])[0]
        if message is not None:
            raise message
        if text is not None:
            raise ThumbsError(text)


def _check(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ThumbsError("--resume and --overwrite exclude each other", hint="pass one of them")
    if overwrite:
        for name in RUN_FILES:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        return
    checkpoints = run_dir / "checkpoints"
    if checkpoints.exists() and not checkpoints.is_dir():
        raise ThumbsError(
            "'checkpoints' in the run folder is a file, where checkpoints are written",
            file=str(checkpoints),
            hint="remove it, or pass --overwrite to start the run again",
        )
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if found and not resume:
        what = "a finished run" if "final" in found else "another run's files"
        raise ThumbsError(
            f"the output folder already holds {what} ({', '.join(found)})",
            file=str(run_dir),
            hint="pass --resume to continue that run, --overwrite to replace it, or another --output-dir",
        )


def record(cfg, data: int) -> dict:
    """What a checkpoint keeps of its run: the config (resolved) and the fingerprint of its examples."""
    return {"config": _flat(cfg.model_dump(mode="json")), "data": data}


def differences(saved: dict, now: dict) -> list[str]:
    """What differs between a run's record and the current one, keys that may differ left out."""
    before, after = saved.get("config", {}), now["config"]
    out = [
        f"{key}: {before.get(key, '(unset)')!r} in the run, {after.get(key, '(unset)')!r} now"
        for key in sorted(set(before) | set(after))
        if key not in RESUMABLE and before.get(key) != after.get(key)
    ]
    if "data" in saved and saved["data"] != now["data"]:
        out.append("the training examples (data.train after the data options, tokenized) differ")
    return out


def check_resume(saved: dict | None, now: dict, where: Path) -> None:
    """Stop a resume whose config or data differ from the run's, saying what differs."""
    diff = differences(saved, now) if saved is not None else []
    if diff:
        raise ThumbsError(
            "--resume: this is not the run in the folder: " + "; ".join(diff[:6]),
            file=str(where),
            hint="resume with the run's own config (its config.yaml), or pass --overwrite to start again",
        )


def saved_config(run_dir: Path) -> dict | None:
    """The record of a run that left no checkpoint: the config it saved, when it got that far."""
    import yaml

    path = run_dir / "config.yaml"
    try:
        tree = yaml.safe_load(path.read_text()) if path.exists() else None
    except (OSError, yaml.YAMLError):
        return None
    return {"config": _flat(tree)} if isinstance(tree, dict) else None


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "tiny":
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out
