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
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("THUMBS_THREADS", raising=False)
    governor = cores.Governor(interval=0.0, torch_module=FakeTorch(2))
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:  # this process busy for a second
        pass
    others = governor.others_busy_cores()
    busy_now = cores.Governor(interval=0.0, torch_module=FakeTorch(2))
    time.sleep(0.5)
    background = busy_now.others_busy_cores()  # what the rest of the machine does anyway
    assert others < background + 0.6, (others, background)  # ours would add a whole core


@pytest.mark.parametrize("env", [{"OMP_NUM_THREADS": "3"}, {"THUMBS_THREADS": "fixed"}])
def test_a_chosen_thread_count_is_left_alone(monkeypatch, env):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    torch = FakeTorch(3)
    governor = cores.Governor(interval=0.0, torch_module=torch)
    assert not governor.enabled
    assert governor.adjust() is None and torch.threads == 3
