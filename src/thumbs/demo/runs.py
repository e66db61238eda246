"""What every embedded run shares: the sizes (full and quick), the demo's training config, and
train/evaluate steps that reuse a finished run or evaluation instead of redoing it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from thumbs.config import load_config


@dataclass(frozen=True)
class Size:
    examples: int  # votes sampled for training (seeded)
    kto_steps: int
    dpo_steps: int
    eval_n: int  # sampled completions per model
    heldout: int  # held-out votes scored for the AUC
    max_new_tokens: int


FULL = Size(examples=320, kto_steps=40, dpo_steps=25, eval_n=48, heldout=200, max_new_tokens=48)
QUICK = Size(examples=160, kto_steps=12, dpo_steps=8, eval_n=16, heldout=100, max_new_tokens=32)


_MARKS: list[tuple[int, str, float]] = []  # the stages begun so far: number, title, start time


def stage(number: int, text: str) -> None:
    """A numbered stage's header; its start is kept for ``stage_times``."""
    import time

    _MARKS.append((number, text, time.perf_counter()))
    print(f"\n━━ {number}. {text} " + "━" * max(0, 70 - len(text)), flush=True)


def stage_times() -> str:
    """How long each stage took, up to now, as lines to print at the end (and start afresh)."""
    import time

    ends = [t for _, _, t in _MARKS[1:]] + [time.perf_counter()]
    lines = [
        f"  {n}. {text.split(':')[0][:44]:44s} {end - t0:7.1f} s" for (n, text, t0), end in zip(_MARKS, ends)
    ]
    _MARKS.clear()
    return "thumbs: time by stage\n" + "\n".join(lines)


def run_config(method: str, data_dir: Path, out: Path, size: Size, model: str, extra: dict | None = None):
    """The demo's training config: LoRA on the default model, CPU-sized; ``extra``: more dotted keys."""
    overrides = {
        "method": method,
        "output_dir": str(out / method),
        "model.name_or_path": model,
        "model.lora.r": 16,
        "model.lora.alpha": 32,
        "data.train": str(data_dir),
        "data.max_length": 128,
        "data.limit": size.examples,
        "train.seed": 0,
        "train.learning_rate": 5e-4,
        "train.warmup_ratio": 0.1,
        "train.log_every": 2,
    }
    if method == "kto":
        overrides |= {
            "kto.undesirable_weight": "auto",
            "train.batch_size": 8,
            "train.max_steps": size.kto_steps,
        }
    else:  # each pair is two sequences: half the pairs per step keeps the work per step alike
        overrides |= {"dpo.pairing": "matched", "train.batch_size": 4, "train.max_steps": size.dpo_steps}
    overrides |= extra or {}
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])


def train_or_reuse(cfg) -> Path:
    """Train, or resume from a checkpoint, unless the run folder holds a finished run already."""
    from thumbs.train.loop import train

    run_dir = Path(cfg.output_dir)
    if (run_dir / "final").exists():
        print(f"thumbs: reusing the finished run in {run_dir}")
    else:
        resume = (run_dir / "checkpoints").is_dir()  # else what a stopped attempt left is cleared
        train(cfg, resume=resume, overwrite=not resume)
    return run_dir


def evaluate_or_reuse(run_dir: Path, size: Size, **kwargs) -> None:
    """Evaluate a run against its start with the VADER judge, unless its eval.json exists already."""
    from thumbs.eval.evaluation import evaluate

    if (run_dir / "eval.json").exists():
        print(f"thumbs: reusing {run_dir / 'eval.json'}")
        return
    print(f"thumbs: evaluating {run_dir.name}")
    evaluate(
        run_dir, judge="vader", n=size.eval_n, max_new_tokens=size.max_new_tokens, max_heldout=size.heldout,
        **kwargs,
    )  # fmt: skip
