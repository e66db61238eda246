"""What a run logs: sums over the microbatches of a log interval, reduced over processes into one
record of ``metrics.jsonl`` per log step."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from thumbs.errors import ThumbsError


class Tally:
    """The running sums of one log interval. The loop adds each microbatch and each optimizer step;
    ``record`` reduces them over processes, formats one ``metrics.jsonl`` line and starts afresh."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.kl, self.micro, self.grad_norm, self.steps, self.tokens, self.skipped = 0.0, 0, 0.0, 0, 0, 0
        self.pending: list[tuple[dict, float, int]] = []  # this step's microbatches, until it counts
        self.t0 = time.perf_counter()

    def microbatch(self, metrics: dict, weighted_losses: torch.Tensor, tokens: int) -> None:
        """One microbatch's method metrics (sums), its weighted losses and its real token count."""
        kl = float(metrics.pop("kl", 0.0))
        metrics["loss_sum"] = weighted_losses.detach().sum()
        metrics["count"] = torch.tensor(float(len(weighted_losses)), device=weighted_losses.device)
        self.pending.append(({k: v.detach().float() for k, v in metrics.items()}, kl, tokens))

    def step(self, grad_norm: float) -> None:
        """The step's microbatches count: it updated the model."""
        for metrics, kl, tokens in self.pending:
            for key, value in metrics.items():
                self.sums[key] = self.sums.get(key, 0.0) + value
            self.kl, self.micro, self.tokens = self.kl + kl, self.micro + 1, self.tokens + tokens
        self.pending = []
        self.grad_norm += grad_norm
        self.steps += 1

    def skip(self) -> None:
        """The step was skipped (a non-finite loss or gradient norm): its numbers are left out."""
        self.pending = []
        self.skipped += 1

    def record(self, step: int, per_epoch: int, cfg, lr: float, accelerator) -> dict:
        """The interval's line (a collective: every process calls it), then a fresh interval."""
        seconds = time.perf_counter() - self.t0
        record = {"step": step, "epoch": round(step * cfg.train.grad_accum / per_epoch, 4), "lr": lr}
        if self.steps:  # every process skips the same steps, so all take this branch or none
            keys = sorted(self.sums)
            # some counts (SFT's) are made on the CPU: move them where the reduce runs
            stacked = torch.stack([self.sums[k].to(accelerator.device) for k in keys])
            totals = dict(zip(keys, accelerator.reduce(stacked, "sum").tolist()))
            tokens = accelerator.reduce(torch.tensor(float(self.tokens), device=accelerator.device), "sum")
            record |= {
                "loss": totals["loss_sum"] / max(totals["count"], 1),
                "grad_norm": self.grad_norm / self.steps,
                "tokens_per_second": float(tokens) / max(seconds, 1e-9),
                "examples": int(totals["count"]),
            }
            record.update(_method_metrics(cfg.method, totals, self.kl / max(self.micro, 1)))
        record["skipped_steps"] = self.skipped  # in this interval: no update, numbers left out
        self.__init__()
        return record


def _method_metrics(method: str, totals: dict, kl: float) -> dict:
    record = {}
    if method in ("kto", "bco", "apo_zero"):  # the unpaired methods: rewards per class
        if method == "kto":
            record["kl"] = kl
        if totals.get("reward_shift_count"):  # BCO's δ, the mean over the interval's microbatches
            record["reward_shift"] = totals["reward_shift_sum"] / totals["reward_shift_count"]
        for cls in ("desirable", "undesirable"):
            if totals[f"rewards/{cls}_count"]:
                record[f"rewards/{cls}"] = totals[f"rewards/{cls}_sum"] / totals[f"rewards/{cls}_count"]
                record[f"logps/{cls}"] = totals[f"logps/{cls}_sum"] / totals[f"rewards/{cls}_count"]
        if "rewards/desirable" in record and "rewards/undesirable" in record:
            record["rewards/margin"] = record["rewards/desirable"] - record["rewards/undesirable"]
    elif method == "dpo":
        n = max(totals["pairs_count"], 1)
        record["rewards/chosen"] = totals["rewards/chosen_sum"] / n
        record["rewards/rejected"] = totals["rewards/rejected_sum"] / n
        record["rewards/margin"] = record["rewards/chosen"] - record["rewards/rejected"]
        record["rewards/accuracy"] = totals["rewards/accuracy_sum"] / n
    else:
        record["nll"] = totals["nll_sum"] / max(totals["nll_count"], 1)
    return record


def describe_nonfinite(norm: float, bad: list, flagged: int, items=None, tokenizer=None) -> str:
    """What a skipped step saw: the microbatches (index, example numbers: 0-based rows of the
    training table after the data options) whose loss was not finite, the first one's completion
    (to find it in the data), and the gradient norm."""
    if not bad:
        where = f"on another process ({flagged} microbatch(es))" if flagged else "with a finite loss"
        return f"gradient norm {norm} {where}"
    shown = ", ".join(f"microbatch {a}: examples {index[:8]}" for a, index in bad[:3])
    if items is not None and tokenizer is not None:
        first = bad[0][1][0]
        ids, start = items.seqs[next(iter(items.seqs))][first]
        text = tokenizer.decode(ids[start:], skip_special_tokens=True).strip()
        shown += f"; example {first}'s completion: {text[:60]!r}"
    return f"non-finite loss ({shown}); gradient norm {norm}"


def nonfinite_error(run_dir: Path, step: int, fault: str, skipped: int, allowed: int) -> ThumbsError:
    """The run stops: no update was made from the bad step; the last checkpoint stays as it was."""
    from thumbs.train.checkpoint import complete_checkpoints

    kept = complete_checkpoints(run_dir)
    return ThumbsError(
        f"training stopped at step {step}: {fault}"
        + (f" ({skipped} bad steps, train.skip_nonfinite_steps allows {allowed})" if allowed else "")
        + (f"; the last good checkpoint is step-{kept[-1]}" if kept else "; no model was saved"),
        file=str(run_dir),
        hint="look at those examples; lower train.learning_rate or set train.max_grad_norm, "
        "or let train.skip_nonfinite_steps skip a few bad steps",
    )


def append(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, step: int, say=print) -> list[dict]:
    """On resume, drop logged steps after the checkpoint (they are about to be logged again) and
    any line a kill cut short; returns the records kept."""
    from thumbs.folders import write_text

    if not path.exists():
        return []
    kept, cut = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError
        except ValueError:  # JSONDecodeError is a ValueError
            cut += 1
            continue
        if record["step"] <= step:
            kept.append(record)
    if cut:
        say(f"thumbs: note: dropped {cut} unreadable line(s) of {path} (a run stopped mid-write)")
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept
