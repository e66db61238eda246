"""Data conditions: seeded, exact in their counts, recorded, and applied inside training's data path."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from tests.helpers import tiny_config, toy_feedback, write_jsonl
from thumbs.audit.conditions import apply_condition
from thumbs.errors import ThumbsError
from thumbs.train.setup import training_table


def _table(n=200, seed=0):
    rows = toy_feedback(n, seed=seed)
    return pa.table({
        "prompt": [json.dumps(r["prompt"]) if isinstance(r["prompt"], list) else r["prompt"] for r in rows],
        "completion": [r["completion"] for r in rows],
        "label": [r["label"] for r in rows],
        "user_id": [r["user_id"] for r in rows],
    })  # fmt: skip


def _labels(table):
    return np.asarray(table["label"].to_pylist())


def test_imbalance_keeps_the_stated_share_of_thumbs_up_and_every_thumbs_down():
    table = _table()
    ups, downs = int(_labels(table).sum()), int((~_labels(table)).sum())
    out, record = apply_condition(table, "imbalance", 0.1, seed=1)
    assert int(_labels(out).sum()) == round(0.1 * ups) == record["desirable_kept"]
    assert int((~_labels(out)).sum()) == downs == record["undesirable_out"]
    kept = set(zip(out["completion"].to_pylist(), out["user_id"].to_pylist()))
    assert kept <= set(zip(table["completion"].to_pylist(), table["user_id"].to_pylist()))
    again, _ = apply_condition(table, "imbalance", 0.1, seed=1)
    other, _ = apply_condition(table, "imbalance", 0.1, seed=2)
    assert again.equals(out) and not other.equals(out)


def test_noise_flips_exactly_the_stated_share():
    table = _table()
    out, record = apply_condition(table, "noise", 0.3, seed=0)
    changed = int((_labels(out) != _labels(table)).sum())
    assert changed == round(0.3 * table.num_rows) == record["flipped"]
    assert out["completion"].equals(table["completion"])


def test_downvoters_recast_a_share_of_votes_as_planted_heavy_users():
    table = _table()
    out, record = apply_condition(table, "downvoters", 0.35, seed=0, heavy_users=2, down_rate=0.95)
    users = out["user_id"].to_pylist()
    heavy = np.array([u.startswith("heavy-") for u in users])
    assert heavy.sum() == round(0.35 * table.num_rows) == record["recast"]
    assert set(u for u in users if u.startswith("heavy-")) <= {"heavy-0", "heavy-1"}
    assert (~_labels(out)[heavy]).mean() > 0.85  # they vote down almost always
    assert _labels(out)[~heavy].tolist() == _labels(table)[~heavy].tolist()  # the others untouched


def test_training_applies_and_records_the_condition(tmp_path):
    data = write_jsonl(tmp_path / "f.jsonl", toy_feedback(80, seed=2))
    cfg = tiny_config(tmp_path, data, data__condition={"kind": "noise", "fraction": 0.25, "seed": 4})
    table, summary = training_table(cfg)
    assert summary["condition"]["kind"] == "noise" and summary["condition"]["flipped"] == 20
    plain, _ = training_table(tiny_config(tmp_path, data))
    assert int((_labels(table) != _labels(plain)).sum()) == 20
    dpo = tiny_config(tmp_path, data, method="dpo", data__condition={"kind": "imbalance", "fraction": 0.5})
    _, summary = training_table(dpo)  # DPO pairs what is left after the condition
    assert summary["condition"]["desirable_kept"] < summary["condition"]["desirable_in"]
    assert summary["pairing"]["feedback_examples"] == summary["condition"]["examples_out"]


def test_a_condition_on_pairs_or_with_a_bad_kind_is_refused(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 4)
    with pytest.raises(ThumbsError, match="not on pairs"):
        training_table(
            tiny_config(tmp_path, pairs, method="dpo", data__condition={"kind": "noise", "fraction": 0.5})
        )
    with pytest.raises(ThumbsError, match="data.condition.kind"):
        tiny_config(tmp_path, pairs, data__condition={"kind": "shuffle", "fraction": 0.5})
