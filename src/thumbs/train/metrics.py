"""What a run logs: sums over the microbatches of a log interval, reduced over processes into one
record of ``metrics.jsonl`` per log step."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


class Tally:
    """The running sums of one log interval. The loop adds each microbatch and each optimizer step;
    ``record`` reduces them over processes, formats one ``metrics.jsonl`` line and starts afresh."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.kl, self.micro, self.grad_norm, self.steps, self.tokens = 0.0, 0, 0.0, 0, 0
        self.t0 = time.perf_counter()

    def microbatch(self, metrics: dict, weighted_losses: torch.Tensor, tokens: int) -> None:
        """One microbatch's method metrics (sums), its weighted losses and its real token count."""
        self.kl += float(metrics.pop("kl", 0.0))
        self.micro += 1
        self.tokens += tokens
        metrics["loss_sum"] = weighted_losses.detach().sum()
        metrics["count"] = torch.tensor(float(len(weighted_losses)), device=weighted_losses.device)
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value.detach().float()

    def step(self, grad_norm: float) -> None:
        self.grad_norm += grad_norm
        self.steps += 1

    def record(self, step: int, per_epoch: int, cfg, lr: float, accelerator) -> dict:
        """The interval's line (a collective: every process calls it), then a fresh interval."""
        keys = sorted(self.sums)
        # some counts (SFT's) are made on the CPU: move them where the reduce runs
        stacked = torch.stack([self.sums[k].to(accelerator.device) for k in keys])
        totals = dict(zip(keys, accelerator.reduce(stacked, "sum").tolist()))
        seconds = time.perf_counter() - self.t0
        tokens = accelerator.reduce(torch.tensor(float(self.tokens), device=accelerator.device), "sum")
        record = {
            "step": step,
            "epoch": round(step * cfg.train.grad_accum / per_epoch, 4),
            "loss": totals["loss_sum"] / max(totals["count"], 1),
            "lr": lr,
            "grad_norm": self.grad_norm / max(self.steps, 1),
            "tokens_per_second": float(tokens) / max(seconds, 1e-9),
            "examples": int(totals["count"]),
        }
        record.update(_method_metrics(cfg.method, totals, self.kl / max(self.micro, 1)))
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


def append(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop logged steps after the checkpoint: they are about to be logged again."""
    if not path.exists():
        return
    kept = [
        line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step
    ]
    path.write_text("".join(line + "\n" for line in kept))
