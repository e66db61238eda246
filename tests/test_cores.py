"""Threads follow the free cores: fewer beside a busy process, all of them on an idle machine,
and a user's own OMP_NUM_THREADS is left alone."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from thumbs import cores


class FakeTorch:
    def __init__(self, threads: int):
        self.threads = threads

    def get_num_threads(self) -> int:
        return self.threads

    def set_num_threads(self, n: int) -> None:
        self.threads = n


@pytest.mark.parametrize(
    "others, n, expected",
    [(0.0, 2, 2), (0.3, 2, 2), (0.9, 2, 1), (1.0, 2, 1), (2.0, 2, 1), (1.0, 8, 7), (3.2, 8, 5), (0.0, 1, 1)],
)
def test_threads_for_the_cores_left(others, n, expected):
    assert cores.threads_for(others, n) == expected


def test_a_busy_process_beside_us_takes_a_thread_away(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("THUMBS_THREADS", raising=False)
    monkeypatch.setattr(cores, "usable_cores", lambda: 2)
    torch = FakeTorch(2)
    governor = cores.Governor(interval=0.0, torch_module=torch)
    assert governor.enabled
    spinner = subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"])
    try:
        time.sleep(1.5)  # a window in which another process kept a core busy and we did nothing
        assert governor.adjust() == 1
        assert torch.threads == 1
    finally:
        spinner.kill()
        spinner.wait()


def test_our_own_work_does_not_count_as_someone_elses(monkeypatch):
    """Over a window of 2 s in which the machine was busy 2.5 core-seconds, 1.9 of them ours:
    the others kept 0.3 cores busy (too little to take a thread away)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("THUMBS_THREADS", raising=False)
    monkeypatch.setattr(cores, "usable_cores", lambda: 2)
    clock, machine, own = [100.0], [50.0], [10.0]
    monkeypatch.setattr(cores.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(cores, "_machine_busy_seconds", lambda: machine[0])
    monkeypatch.setattr(cores, "_own_busy_seconds", lambda: own[0])
    torch = FakeTorch(2)
    governor = cores.Governor(interval=1.0, torch_module=torch)
    clock[0], machine[0], own[0] = clock[0] + 2.0, machine[0] + 2.5, own[0] + 1.9
    assert governor.others_busy_cores() == pytest.approx(0.3)
    clock[0], machine[0], own[0] = clock[0] + 2.0, machine[0] + 3.9, own[0] + 1.9
    assert governor.adjust() == 1 and torch.threads == 1  # others took a core: 2.0 core-seconds in 2 s
    clock[0], machine[0], own[0] = clock[0] + 2.0, machine[0] + 1.0, own[0] + 1.0
    assert governor.adjust() == 2 and torch.threads == 2  # they left: the core comes back


def test_the_first_look_sees_a_core_already_taken(monkeypatch):
    """Started beside a busy process, the governor's first look (over the 0.25 s it waits) gives up
    the taken core at once, before any work."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("THUMBS_THREADS", raising=False)
    monkeypatch.setattr(cores, "usable_cores", lambda: 2)
    clock, machine = [100.0], [50.0]
    monkeypatch.setattr(cores.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(cores, "_own_busy_seconds", lambda: 10.0)
    monkeypatch.setattr(cores, "_machine_busy_seconds", lambda: machine[0])

    def sleep(seconds):  # another process keeps one core busy while we wait
        clock[0] += seconds
        machine[0] += seconds

    monkeypatch.setattr(cores.time, "sleep", sleep)
    torch = FakeTorch(2)
    governor = cores.Governor(interval=2.0, torch_module=torch)
    assert governor.threads == 1 and torch.threads == 1


@pytest.mark.parametrize("env", [{"OMP_NUM_THREADS": "3"}, {"THUMBS_THREADS": "fixed"}])
def test_a_chosen_thread_count_is_left_alone(monkeypatch, env):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    torch = FakeTorch(3)
    governor = cores.Governor(interval=0.0, torch_module=torch)
    assert not governor.enabled
    assert governor.adjust() is None and torch.threads == 3


HEAP_PROBE = """
import ctypes, torch
from thumbs.cores import keep_large_blocks
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
print(keep_large_blocks())
mapped = libc.mallinfo2().hblkhd
block = torch.ones(64 << 18)  # 64 MiB of float32, above glibc's largest default mmap threshold
print((libc.mallinfo2().hblkhd - mapped) >> 20)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's heap")
@pytest.mark.parametrize(
    "env, tuned, mapped_mib",
    [
        ({}, "True", "0"),
        ({"THUMBS_HEAP": "default"}, "False", "64"),
        ({"MALLOC_TRIM_THRESHOLD_": "1000000"}, "False", "64"),
    ],
)
def test_large_tensors_come_from_the_heap_unless_the_user_chose(env, tuned, mapped_mib):
    """A 64 MiB tensor (the LM head's logits chunk is 48 MiB on a 49k vocabulary) is reused from the
    heap, not mapped afresh and faulted in page by page; a user's own malloc settings win."""
    import os

    clean = {k: v for k, v in os.environ.items() if k not in ("THUMBS_HEAP", "MALLOC_TRIM_THRESHOLD_")}
    out = subprocess.run(
        [sys.executable, "-c", HEAP_PROBE], env={**clean, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [tuned, mapped_mib]
