"""Intra-op threads sized to the cores that are actually free, checked again as a run goes on.

PyTorch starts one OpenMP thread per core and splits every operation between them; each waits
for the slowest at the end of the operation. When another process holds one of the cores, the
thread that shares it runs in scheduler slices of a few milliseconds, so every small operation
waits for it: on a 2-core machine beside one busy process a KTO step ran 3.6× slower instead of
at most 2×. With one thread fewer there is nobody to wait for.

``Governor.adjust()`` is called between units of work (an optimizer step, a reference batch, a
sampling batch). At most every ``interval`` seconds it reads how much CPU the *other* processes
used since the last look (all cores' busy time from ``/proc/stat`` minus this process's own from
``/proc/self/stat``) and sets ``torch.set_num_threads`` to the cores left, at least one. An idle
machine keeps every core, so nothing changes there. A user who sets ``OMP_NUM_THREADS`` (or
``THUMBS_THREADS=fixed``) has chosen: the governor leaves the thread count alone.

The first call also sets up glibc's heap for tensor work (``keep_large_blocks``).
"""

from __future__ import annotations

import os
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_seconds() -> float | None:
    """Busy CPU seconds of every core since boot (user + nice + system + irq + softirq + steal)."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def _own_busy_seconds() -> float:
    times = os.times()
    return times.user + times.system


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_for(others_busy_cores: float, cores: int) -> int:
    """Threads to run with when other processes keep ``others_busy_cores`` cores busy on average.

    A core counts as taken when others use more than ~60% of it: a short burst should not cost a
    whole thread, a process that keeps a core busy should."""
    taken = int(others_busy_cores + 0.4)
    return max(1, min(cores, cores - taken))


class Governor:
    def __init__(self, interval: float = 2.0, torch_module=None):
        if torch_module is None:
            import torch as torch_module
        self._torch = torch_module
        self.interval = interval
        # never more than PyTorch's own choice (one per physical core), never more than we may use
        self.cores = min(usable_cores(), torch_module.get_num_threads())
        fixed = os.environ.get("OMP_NUM_THREADS") or os.environ.get("THUMBS_THREADS") == "fixed"
        self.enabled = not fixed and self.cores > 1 and _machine_busy_seconds() is not None
        self._last = self._sample()
        self.threads = None
        if self.enabled and interval > 0:  # a first look before any work: idle here, so it is quick and fair
            time.sleep(0.25)
            # over the 0.25 s just slept (this look once stretched the window by ``interval`` and
            # so read a busy core as 0.11: the first seconds of a run, often its whole reference
            # pass, ran two threads beside a busy process)
            self._set(threads_for(self.others_busy_cores(), self.cores))

    def _sample(self) -> tuple[float, float, float]:
        return time.monotonic(), _machine_busy_seconds() or 0.0, _own_busy_seconds()

    def others_busy_cores(self) -> float:
        """Average cores other processes kept busy since the last look (and start a new window)."""
        now = self._sample()
        wall = now[0] - self._last[0]
        others = (now[1] - self._last[1]) - (now[2] - self._last[2])
        self._last = now
        return max(0.0, others / wall) if wall > 0 else 0.0

    def adjust(self) -> int | None:
        """Set the thread count for the cores free now; the count in force (None when disabled)."""
        if not self.enabled or time.monotonic() - self._last[0] < self.interval:
            return self.threads
        return self._set(threads_for(self.others_busy_cores(), self.cores))

    def _set(self, wanted: int) -> int:
        if wanted != self._torch.get_num_threads():
            self._torch.set_num_threads(wanted)
        self.threads = wanted
        return wanted


# glibc's heap: blocks up to this size come from the heap and are reused once freed (default:
# anything over 128 KiB-32 MiB is mapped afresh and unmapped on free); up to TRIM stays free at its top
MMAP_THRESHOLD, TRIM_THRESHOLD = 256 << 20, 512 << 20
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def keep_large_blocks() -> bool:
    """Let glibc reuse freed blocks of up to 256 MiB instead of mapping each one afresh.

    By default glibc serves every block above 32 MiB (at most) with its own ``mmap`` and unmaps it
    on free, so each new one faults in fresh zeroed pages. A training step makes several such
    blocks: the LM head's [49,152, 576] weight gradient (108 MiB), and where the head cannot run
    in vocabulary blocks (``thumbs.train.head``) its [256, 49,152] float32 logits (48 MiB) per chunk. On this 2-core CPU that made the head's weight-gradient matmul run
    at 140 GFLOP/s instead of 194 and its log-sum-exp take 22 ms instead of 8. A KTO step on the
    135M bench shape (full fine-tuning, one process alternating the two settings on one
    microbatch): 8.99 s with glibc's defaults, 8.33 s with the blocks reused; a whole bench run
    95 → 108 tokens/s, its peak 3,270 → 3,356 MiB.

    Left alone where the user has chosen (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
    set, or ``THUMBS_HEAP=default``) and off glibc. Returns whether it was set.
    """
    import ctypes
    import platform

    chosen = any(os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))
    if chosen or os.environ.get("THUMBS_HEAP") == "default" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


_GOVERNOR: Governor | None = None


def adjust_threads() -> int | None:
    """The process-wide governor's ``adjust()``; cheap enough to call between any units of work."""
    global _GOVERNOR
    if _GOVERNOR is None:
        keep_large_blocks()
        _GOVERNOR = Governor()
    return _GOVERNOR.adjust()
