"""Which examples each microbatch holds: a seeded order per epoch, never by label, the same on
every process (each takes its slice)."""

from __future__ import annotations

import random


def epoch_microbatches(lengths: list[int], size: int, epoch: int, seed: int, group: bool) -> list[list[int]]:
    """The global microbatches of one epoch: a seeded shuffle, then (optionally) similar lengths
    grouped inside windows of 32 microbatches, whose order is shuffled again. Never ordered by label.
    A final partial microbatch is dropped (the next epoch reshuffles, so nothing is always left out).
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group:
        window = size * 32
        order = [
            i
            for s in range(0, len(order), window)
            for i in sorted(order[s : s + window], key=lengths.__getitem__)
        ]
    batches = [order[s : s + size] for s in range(0, len(order) - size + 1, size)]
    if group:
        rng.shuffle(batches)
    return batches


class Microbatches:
    """Global microbatch ``k`` (counted from the run's start, across epochs) as this process's slice."""

    def __init__(self, lengths: list[int], cfg, accelerator, per_epoch: int):
        self.lengths, self.cfg, self.per_epoch = lengths, cfg, per_epoch
        self.size, self.rank = cfg.train.batch_size, accelerator.process_index
        self.world = accelerator.num_processes
        self.epoch, self.batches = None, []

    def __call__(self, k: int) -> list[int]:
        epoch, j = divmod(k, self.per_epoch)
        if epoch != self.epoch:
            train = self.cfg.train
            self.epoch = epoch
            self.batches = epoch_microbatches(
                self.lengths, self.size * self.world, epoch, train.seed, train.group_by_length
            )
        return self.batches[j][self.rank * self.size : (self.rank + 1) * self.size]
