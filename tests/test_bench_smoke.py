"""The eval benchmark runs end to end on a tiny model and holds its own check: thumbs' samples in
batches of one size equal generate's in batches of another (figures are not asserted: wall time
is never a test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_eval_samples_the_same_across_batch_sizes_and_reports_every_ratio(tmp_path):
    env = dict(os.environ, THUMBS_CACHE=str(tmp_path / "cache"))
    args = ["--model", "quick", "--n", "6", "--max-new-tokens", "5", "--repeats", "1", "--batch-size", "2",
            "--thumbs-batch-size", "4", "--distinct", "3", "--json"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "eval.py"), *args], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["same_samples"] is True
    assert result["batch_size"] == {"thumbs": 4, "transformers": 2}
    assert set(result["samples_per_s"]) == {"thumbs", "transformers", "before"}
    assert result["same_as_before"].endswith("of 6")
    assert result["speedup"] > 0 and result["speedup_vs_before"] > 0
