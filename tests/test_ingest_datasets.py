"""thumbs ingest takes a save_to_disk folder and a cached Hub dataset id as a SOURCE, and TRL's
rows as they are, in a dataset or a file: a conversational completion is a vote on its last
assistant message, a pair is two votes."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from tests.helpers import toy_feedback, write_jsonl
from tests.test_formats import _cache_as_hub_dataset
from thumbs.data.ingest import ingest
from thumbs.errors import ThumbsError

datasets = pytest.importorskip("datasets")


def _votes(folder) -> list[tuple]:
    events = pq.read_table(folder / "events.parquet").to_pylist()
    return sorted((e["prompt"], e["completion"], e["label"], e["user_id"]) for e in events)


def _chat_rows(n: int = 12) -> list[dict]:
    rows = toy_feedback(n, seed=5)
    for i, row in enumerate(rows):
        row["prompt"] = [{"role": "user", "content": f"Review item {i}."}]
    return rows


def test_a_saved_conversational_dataset_ingests_like_its_jsonl(tmp_path):
    rows = _chat_rows()
    ingest([str(write_jsonl(tmp_path / "thumbs.jsonl", rows))], tmp_path / "from-jsonl")
    trl = [{**r, "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows]
    datasets.Dataset.from_list(trl).save_to_disk(str(tmp_path / "saved"))
    manifest = ingest([str(tmp_path / "saved")], tmp_path / "from-dataset")
    (entry,) = manifest["sources"]
    assert entry["kind"] == "dataset" and entry["shape"] == "flat" and entry["rows_ok"] == len(rows)
    assert _votes(tmp_path / "from-dataset") == _votes(tmp_path / "from-jsonl")


def test_pairs_become_a_vote_up_and_a_vote_down(tmp_path):
    rows = _chat_rows(8)
    pairs = [{"prompt": a["prompt"][0]["content"], "chosen": a["completion"], "rejected": b["completion"]}
             for a, b in zip(rows[::2], rows[1::2])]  # fmt: skip
    datasets.DatasetDict({"train": datasets.Dataset.from_list(pairs)}).save_to_disk(str(tmp_path / "pairs"))
    manifest = ingest([str(tmp_path / "pairs")], tmp_path / "out")
    assert manifest["events"] == 2 * len(pairs)
    votes = {(p, c, up) for p, c, up, _ in _votes(tmp_path / "out")}
    assert votes == {(p["prompt"], p["chosen"], True) for p in pairs} | {
        (p["prompt"], p["rejected"], False) for p in pairs
    }


def test_a_cached_hub_id_is_a_source_and_a_missing_one_a_clear_error(tmp_path, monkeypatch):
    rows = [{**r, "prompt": r["prompt"][0]["content"]} for r in _chat_rows()]
    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", _cache_as_hub_dataset(tmp_path, rows, "acme/votes")
    )
    manifest = ingest(["hf:acme/votes"], tmp_path / "out")
    assert manifest["events"] == len(rows) and manifest["sources"][0]["source"] == "hf:acme/votes"
    with pytest.raises(ThumbsError, match="acme/absent.*not in the local datasets cache"):
        ingest(["hf:acme/absent"], tmp_path / "out2")


def test_trl_rows_in_a_jsonl_file_ingest_like_the_dataset(tmp_path):
    rows = _chat_rows(8)
    conversational = [{**r, "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows]
    pairs = [{"chosen": a["prompt"] + [{"role": "assistant", "content": a["completion"]}],  # implicit prompt
              "rejected": a["prompt"] + [{"role": "assistant", "content": b["completion"]}], "user_id": "rater"}
             for a, b in zip(rows[::2], rows[1::2])]  # fmt: skip
    manifest = ingest([str(write_jsonl(tmp_path / "trl.jsonl", conversational + pairs))], tmp_path / "out")
    (entry,) = manifest["sources"]
    assert entry["trl"] == {"pairs": 4, "conversational": 16}  # 8 rows + 4 pairs as 8 votes
    assert entry["shape"] == "flat" and entry["rows_in"] == 16 and entry["rows_ok"] == 16
    expected = [*rows]
    expected += [{**a, "label": True, "user_id": "rater"} for a in rows[::2]]
    expected += [{**a, "completion": b["completion"], "label": False, "user_id": "rater"}
                 for a, b in zip(rows[::2], rows[1::2])]  # fmt: skip
    ingest([str(write_jsonl(tmp_path / "thumbs.jsonl", expected))], tmp_path / "plain")
    assert _votes(tmp_path / "out") == _votes(tmp_path / "plain")
