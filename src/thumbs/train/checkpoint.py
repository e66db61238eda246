"""Checkpoints written atomically: a crash mid-write leaves the previous checkpoint usable.

A checkpoint holds only what training changes (trainable weights: the adapter under LoRA),
the optimizer and scheduler, the step, and every process's random-number state, so a resumed run
ends with the same weights as an uninterrupted one. It is written to a hidden temporary folder
and renamed into place (``os.replace`` is atomic); resume reads the newest ``step-N`` that loads.

Weights and optimizer state go through torch.distributed.checkpoint's state-dict functions, which
gather full tensors from FSDP2 shards (every process takes part; the main process receives them
and writes) and hand each process its shard back on resume. Under one process or DDP they are the
plain tensors. Keys are parameter names, so a checkpoint does not depend on how it was sharded.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from thumbs.errors import ThumbsError


def _rng_state() -> dict:
    """Every generator's state as tensors and plain types, so it loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss_next],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
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
    run_dir: Path,
    step: int,
    model,
    optimizer,
    scheduler,
    accelerator,
    keep: int,
    run: dict,
    method_state=None,
) -> Path:
    """Write ``checkpoints/step-N`` whole; ``run`` (config and data fingerprint) lets resume check it."""
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
        state = {"step": step, "model": weights, "optimizer": moments, "scheduler": scheduler.state_dict(),
                 "run": run}  # fmt: skip
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
    for path in root.glob("step-*") if root.is_dir() else []:
        if (path / "state.pt").exists() and path.name[5:].isdigit():
            steps.append(int(path.name[5:]))
    return sorted(steps)


@dataclass
class Checkpoint:
    """A checkpoint read whole (before any model loads), to be checked and then restored."""

    path: Path
    step: int
    state: dict
    rng: dict


def read_checkpoint(run_dir: Path, process_index: int, say=print) -> Checkpoint | None:
    """The newest checkpoint that loads (tensors and plain types only: ``weights_only``); a newer
    one that does not (cut short, empty, a missing random state) is skipped with the reason. None
    when there is no checkpoint; an error when none of them loads."""
    skipped = []
    for step in reversed(complete_checkpoints(run_dir)):
        path = Path(run_dir) / "checkpoints" / f"step-{step}"
        try:
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or {"step", "model", "optimizer", "scheduler"} - set(state):
                raise ValueError("state.pt lacks the step, model, optimizer or scheduler")
            rng_file = path / f"rng-{process_index}.pt"
            if not rng_file.exists():
                raise ValueError(f"{rng_file.name} is missing")
            rng = torch.load(rng_file, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any way a file can be broken; the reason is shown
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            skipped.append(f"{path.name} ({reason})")
            say(f"thumbs: skipping checkpoint {path}: it does not load ({reason})")
            continue
        return Checkpoint(path, state["step"], state, rng)
    if skipped:
        raise ThumbsError(
            "no checkpoint of the run loads: " + "; ".join(skipped),
            file=str(Path(run_dir) / "checkpoints"),
            hint="pass --overwrite to start the run again, or another --output-dir",
        )
    return None


def restore(checkpoint: Checkpoint, model, optimizer, scheduler, method_state=None) -> int:
    """Put a checkpoint's weights, optimizer, schedule, the method's state (BCO's δ) and the random
    state in place; its step."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = checkpoint.state
    saved = set(state["model"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    mismatch = (trainable - saved) | (saved - set(model.state_dict()))
    if mismatch:
        raise ThumbsError(
            f"the checkpoint does not match the model's trainable weights: {sorted(mismatch)[:5]}",
            file=str(checkpoint.path),
            hint="resume with the run's own config, or pass --overwrite to start again",
        )
    set_model_state_dict(model, state["model"], options=_options(strict=False))
    if state["optimizer"] is not None:
        set_optimizer_state_dict(model, _inner(optimizer), state["optimizer"], options=_options())
    scheduler.load_state_dict(state["scheduler"])
    if method_state is not None:
        if state.get("method") is None:  # BCO's δ cannot be rebuilt: it is the mean of every reward seen
            raise ThumbsError(
                "the checkpoint holds no state for this method (BCO's reward shift): another method wrote it",
                file=str(checkpoint.path),
                hint="resume with the method in the run's config.yaml, or start a new run in another folder",
            )
        method_state.load_state_dict(state["method"])
    _set_rng_state(checkpoint.rng)
    return checkpoint.step


def _inner(optimizer):
    """The torch optimizer under Accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def save_final(model, tokenizer, run_dir: Path, cfg) -> None:
    """``final/``: the model (or adapter), its tokenizer and model card, renamed into place whole."""
    from thumbs.train.card import write_card

    final, tmp = run_dir / "final", run_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if cfg.model.lora.enabled and cfg.model.merge_lora:
        merged = model.merge_and_unload()
        merged.save_pretrained(tmp / "merged")
        tokenizer.save_pretrained(tmp / "merged")
    write_card(tmp, run_dir, cfg)  # final/README.md, in place before final/ appears
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
