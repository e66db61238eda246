"""The Python API: the README's example runs as written; in-memory data trains like its file;
``import thumbs`` loads nothing heavy."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from tests.helpers import tiny_config, toy_feedback, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its API example"
    return match.group(1)


def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_example(), "README.md", "exec"), {})
    run = tmp_path / "runs" / "notebook"
    assert (run / "final" / "adapter_model.safetensors").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
    saved = json.loads((run / "eval.json").read_text())
    assert "win rate" in capsys.readouterr().out
    assert 0 <= saved["win_rate"] <= 1 and saved["n"] == 8
    assert (tmp_path / "runs" / "notebook.html").read_text().count("<html") == 1
    # the DataFrame was written into the run folder, and the config points at it
    config = (run / "config.yaml").read_text()
    (data,) = list((run / "data").glob("table-*.parquet"))
    assert str(data) in config


def test_in_memory_data_gives_the_same_run_as_its_file(tmp_path):
    import datasets
    import pandas as pd

    from thumbs import train

    rows = [{**r, "prompt": r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][0]["content"]}
            for r in toy_feedback(16)]  # fmt: skip
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    runs = {}
    for name, data in {
        "file": str(path),
        "pandas": pd.DataFrame(rows),
        "arrow": pa.Table.from_pylist(rows),
        "dataset": datasets.Dataset.from_list(rows),
    }.items():
        cfg = tiny_config(tmp_path, path, output_dir=str(tmp_path / name)).model_dump()
        cfg["data"]["train"] = data
        runs[name] = [
            json.loads(line)["loss"] for line in (train(cfg) / "metrics.jsonl").read_text().splitlines()
        ]
    assert (
        runs["pandas"] == runs["file"] and runs["arrow"] == runs["file"] and runs["dataset"] == runs["file"]
    )


def test_train_takes_a_config_object_and_set_overrides(tmp_path):
    from thumbs import Config, ThumbsError, train

    path = write_jsonl(tmp_path / "train.jsonl", toy_feedback(8))
    cfg = tiny_config(tmp_path, path)
    assert isinstance(cfg, Config)
    run = train(cfg, set={"train.max_steps": 2}, output_dir=tmp_path / "set")
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ThumbsError, match="unknown key 'train.max_stepz'"):
        train(cfg, set=["train.max_stepz=2"])


def test_ingest_and_audit_take_tables(tmp_path):
    import pandas as pd

    from thumbs import audit, ingest

    frame = pd.DataFrame([{**r, "prompt": f"Review {i}:"} for i, r in enumerate(toy_feedback(20))])
    manifest = ingest(frame, tmp_path / "data")
    assert manifest["events"] == 20
    (written,) = list((tmp_path / "data" / "inputs").glob("table-*.parquet"))
    assert manifest["sources"][0]["source"] == str(written)
    from_folder, from_frame = audit(tmp_path / "data")["counts"], audit(frame)["counts"]
    from_folder.pop("by_split"), from_frame.pop("by_split")  # the frame has no ingest splits
    assert from_folder == from_frame and from_frame["events"] == 20


def test_import_thumbs_loads_nothing_heavy():
    code = "import sys, thumbs; print(sorted(m for m in ('torch', 'transformers', 'pyarrow', 'datasets') if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src")}
    )
    assert done.stdout.strip() == "[]", done.stderr
