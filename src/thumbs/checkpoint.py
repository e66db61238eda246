"""Checkpoints written atomically: a crash mid-write leaves the previous checkpoint usable.

A checkpoint holds only what training changes (trainable weights: the adapter under LoRA),
the optimizer and scheduler, the step, and every process's random-number state, so a resumed run
ends with the same weights as an uninterrupted one. It is written to a hidden temporary folder
and renamed into place (``os.replace`` is atomic); resume reads the highest complete ``step-N``.
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


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, accelerator, keep: int) -> Path:
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        state = {
            "step": step,
            "model": trainable_state(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }
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


def load_checkpoint(run_dir: Path, model, optimizer, scheduler, accelerator) -> int:
    """Restore the latest complete checkpoint; returns its step (0 when there is none)."""
    steps = complete_checkpoints(run_dir)
    if not steps:
        return 0
    path = Path(run_dir) / "checkpoints" / f"step-{steps[-1]}"
    state = torch.load(path / "state.pt", weights_only=False)
    missing = set(state["model"]) ^ {n for n, p in model.named_parameters() if p.requires_grad}
    if missing:
        raise RuntimeError(
            f"checkpoint {path} does not match the model's trainable weights: {sorted(missing)[:5]}"
        )
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["model"].items():
            named[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = path / f"rng-{accelerator.process_index}.pt"
    if rng.exists():
        _set_rng_state(torch.load(rng, weights_only=False))
    return state["step"]
