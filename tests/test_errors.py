"""Bad input gets a clear message naming the file, row and field, and exit code 2: no traceback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.helpers import toy_feedback, write_jsonl
from thumbs.cli import app


def _train(tmp_path, rows=None, *sets, raw=None):
    data = tmp_path / "data.jsonl"
    if raw is not None:
        data.write_text(raw)
    else:
        write_jsonl(data, rows)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{name_or_path: tiny}}\ndata: {{train: {data}}}\noutput_dir: {tmp_path / 'run'}\n"
    )
    result = CliRunner().invoke(app, ["train", str(config), *[a for s in sets for a in ("--set", s)]])
    return result, str(data)


def _assert_clear(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_missing_columns(tmp_path):
    rows = [{"prompt": "p", "text": "t", "label": True}]
    result, data = _train(tmp_path, rows)
    _assert_clear(result, data, "missing column(s) completion", "--map")


def test_labels_that_are_not_boolean(tmp_path):
    rows = toy_feedback(4)
    rows[2]["label"] = "yes"
    result, data = _train(tmp_path, rows)
    _assert_clear(result, data, "row 3", "field 'label'", "'yes' is not a boolean")


def test_empty_dataset(tmp_path):
    result, data = _train(tmp_path, raw="")
    _assert_clear(result, data, "missing column")
    result, data = _train(tmp_path, raw="\n")
    _assert_clear(result, data)


def test_malformed_json_line(tmp_path):
    result, data = _train(tmp_path, raw=json.dumps(toy_feedback(1)[0]) + "\n{oops\n")
    _assert_clear(result, data, "row 2", "not valid JSON")


def test_one_class_with_auto_weights(tmp_path):
    rows = [r for r in toy_feedback(30) if r["label"]]
    result, _ = _train(tmp_path, rows, "kto.undesirable_weight=auto")
    _assert_clear(result, "no thumbs-down examples", "numeric kto.desirable_weight")


@pytest.mark.parametrize(
    "setting,needle",
    [
        ("train.bogus=1", "unknown key 'train.bogus'"),
        ("kto.beta=-1", "'kto.beta'"),
        ("method=ppo", "'method'"),
    ],
)
def test_bad_config_keys_fail_before_any_model_loads(tmp_path, setting, needle):
    result, _ = _train(tmp_path, toy_feedback(4), setting)
    _assert_clear(result, "invalid config", needle)


def test_missing_config_and_data(tmp_path):
    result = CliRunner().invoke(app, ["train", str(tmp_path / "nope.yaml")])
    _assert_clear(result, "config file not found")
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{train: {tmp_path / 'missing.jsonl'}}}\nmodel: {{name_or_path: tiny}}\n")
    _assert_clear(CliRunner().invoke(app, ["train", str(config)]), "training data not found", "missing.jsonl")
