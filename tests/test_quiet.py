"""Quiet output: other libraries' progress bars and warnings are gone; thumbs' own bars stay."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

from tests.helpers import toy_feedback, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def test_train_shows_thumbs_bars_and_no_third_party_noise(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", toy_feedback(32))
    sets = ["model.name_or_path=tiny", "model.tiny={hidden_size: 32, num_hidden_layers: 1}", f"data.train={data}",
            "train.max_steps=2", "train.batch_size=4", "data.max_length=64"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    env["THUMBS_CACHE"] = str(tmp_path / "cache")  # reference log-probs computed here, so their bar shows
    for name in (
        "TRANSFORMERS_VERBOSITY",
        "HF_HUB_DISABLE_PROGRESS_BARS",
        "HF_DATASETS_DISABLE_PROGRESS_BARS",
    ):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "thumbs", "train", "-o", str(tmp_path / "run"), *sum((["--set", s] for s in sets), []),
         str(ROOT / "examples" / "tiny.yaml")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "final").is_dir()
    for noise in ("Loading weights", "Writing model shards", "Warning", "warn("):
        assert noise not in done.stderr, done.stderr[-2000:]
    assert "reference log-probs" in done.stderr and "kto:" in done.stderr  # thumbs' own bars


def test_quiet_restores_the_callers_settings():
    from transformers.utils import logging as hf_logging

    from thumbs.quiet import quiet

    hf_logging.set_verbosity_warning()
    hf_logging.enable_progress_bar()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet():
            assert hf_logging.get_verbosity() == hf_logging.ERROR
            assert not hf_logging.is_progress_bar_enabled()
            warnings.warn("old api", FutureWarning, stacklevel=1)
        warnings.warn("still shown", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["still shown"]
    assert hf_logging.get_verbosity() == hf_logging.WARNING
    assert hf_logging.is_progress_bar_enabled()
