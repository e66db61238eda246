"""Checkpoints written atomically: a crash mid-write leaves the previous checkpoint usable.

A checkpoint holds only what training changes (trainable weights: the adapter under LoRA),
the optimizer and scheduler, the step, and every process's random-number state, so a resumed run
ends with the same weights as an uninterrupted one. It is written to a hidden temporary folder
and renamed into place (``os.replace`` is atomic); resume reads the highest complete ``step-N``.

Weights and optimizer state go through torch.distributed.checkpoint's state-dict functions, which
gather full tensors from FSDP2 shards (every process takes part; the main process receives them
and writes) and hand each process its shard back on resume. Under one process or DDP they are the
plain tensors. Keys are parameter names, so a checkpoint does not depend on how it was sharded.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def gathered_state(model, *, trainable_only: bool = True) -> dict[str, torch.Tensor]:
    """Full weights (the trainable ones, or all) on the main process; a collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(
        model, options=_options(cpu_offload=True, ignore_frozen_params=trainable_only)
    )


def _optimizer_state(model, optimizer) -> dict | None:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    if not optimizer.state:  # before the first step: nothing to keep (and nothing to initialise)
        return None
    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def save_checkpoint(
    run_dir: Path, step: int, model, optimizer, scheduler, accelerator, keep: int, method_state=None
) -> Path:
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    weights, moments = gathered_state(model), _optimizer_state(model, _inner(optimizer))
    if accelerator.is_main_process:
        state = {"step": step, "model": weights, "optimizer": moments, "scheduler": scheduler.state_dict()}
        state["method"] = method_state.state_dict() if method_state is not None else None
        torch.save(state, tmp / "state.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(complete_checkpoints(run_dir))[:-keep]:
            shutil.rmtree(root / f"step-{old}", ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def complete_checkpoints(run_dir: Path) -> list[int]:
    root = Path(run_dir) / "checkpoints"
    steps = []
    for path in root.glob("step-*") if root.exists() else []:
        if (path / "state.pt").exists() and path.name[5:].isdigit():
            steps.append(int(path.name[5:]))
    return sorted(steps)


def load_checkpoint(run_dir: Path, model, optimizer, scheduler, accelerator, method_state=None) -> int:
    """Restore the latest complete checkpoint (and the method's state); returns its step (0 when none)."""
    steps = complete_checkpoints(run_dir)
    if not steps:
        return 0
    path = Path(run_dir) / "checkpoints" / f"step-{steps[-1]}"
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = torch.load(path / "state.pt", weights_only=False)  # every process: a shared run folder
    saved = set(state["model"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    mismatch = (trainable - saved) | (saved - set(model.state_dict()))
    if mismatch:
        raise RuntimeError(
            f"checkpoint {path} does not match the model's trainable weights: {sorted(mismatch)[:5]}"
        )
    set_model_state_dict(model, state["model"], options=_options(strict=False))
    if state["optimizer"] is not None:
        set_optimizer_state_dict(model, _inner(optimizer), state["optimizer"], options=_options())
    scheduler.load_state_dict(state["scheduler"])
    if method_state is not None:
        if state.get("method") is None:  # BCO's δ cannot be rebuilt: it is the mean of every reward seen
            from thumbs.errors import ThumbsError

            raise ThumbsError(
                "the checkpoint holds no state for this method (BCO's reward shift): another method wrote it",
                file=str(path),
                hint="resume with the method in the run's config.yaml, or start a new run in another folder",
            )
        method_state.load_state_dict(state["method"])
    rng = path / f"rng-{accelerator.process_index}.pt"
    if rng.exists():
        _set_rng_state(torch.load(rng, weights_only=False))
    return state["step"]


def _inner(optimizer):
    """The torch optimizer under Accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)
