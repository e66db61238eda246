"""data.train takes a save_to_disk folder, a cached Hub dataset id and TRL's formats as they are:
each gives the same tokenized examples as the equivalent thumbs JSONL, and trains."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import tiny_config, toy_feedback, write_jsonl
from thumbs.data.examples import load_examples
from thumbs.errors import ThumbsError
from thumbs.models import tiny_tokenizer
from thumbs.tokenize import Encoder
from thumbs.train.loop import train
from thumbs.train.methods import build_items

datasets = pytest.importorskip("datasets")


def _rows(chat: bool, n: int = 16) -> list[dict]:
    rows = toy_feedback(n, seed=3)
    for i, row in enumerate(rows):
        text = f"Review item {i}:"
        row["prompt"] = [{"role": "user", "content": text}] if chat else text
        row.pop("user_id")
    return rows


def _pairs(chat: bool) -> list[dict]:
    rows = _rows(chat, 16)
    return [{"prompt": a["prompt"], "chosen": a["completion"], "rejected": b["completion"]}
            for a, b in zip(rows[::2], rows[1::2])]  # fmt: skip


def _items(source, method="kto"):
    table = load_examples(str(source), split="train")
    items = build_items(method, table, Encoder(tiny_tokenizer(), 96), seed=0)
    return items.seqs, items.label.tolist(), items.weight.tolist()


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _trains(tmp_path: Path, source, method="kto") -> None:
    cfg = tiny_config(
        tmp_path, source, method=method, train__max_steps=1, output_dir=str(tmp_path / f"run-{method}")
    )
    run = train(cfg)
    assert (run / "final" / "adapter_model.safetensors").exists()
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 1


@pytest.mark.parametrize("chat", [False, True], ids=["text", "conversational"])
def test_unpaired_forms_give_the_jsonl_examples_and_train(tmp_path, chat):
    rows = _rows(chat)
    expected = _items(write_jsonl(tmp_path / "thumbs.jsonl", rows))
    trl_rows = [{**r, "completion": _assistant(r["completion"]) if chat else r["completion"]} for r in rows]
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(trl_rows).save_to_disk(str(saved))
    assert _items(saved) == expected
    assert _items(write_jsonl(tmp_path / "trl.jsonl", trl_rows)) == expected  # TRL's rows in a file
    datasets.Dataset.from_list(trl_rows).to_parquet(str(tmp_path / "trl.parquet"))
    assert _items(tmp_path / "trl.parquet") == expected
    _trains(tmp_path, saved)


@pytest.mark.parametrize("chat", [False, True], ids=["text", "conversational"])
def test_paired_forms_give_the_jsonl_examples_and_train(tmp_path, chat):
    pairs = _pairs(chat)
    expected = _items(write_jsonl(tmp_path / "thumbs.jsonl", pairs), "dpo")
    if chat:
        trl = [{**p, "chosen": _assistant(p["chosen"]), "rejected": _assistant(p["rejected"])} for p in pairs]
    else:
        trl = pairs
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(trl)}).save_to_disk(str(saved))
    assert _items(saved, "dpo") == expected
    if chat:  # TRL's implicit prompt: chosen and rejected hold the whole conversation
        implicit = [{"chosen": p["prompt"] + t["chosen"], "rejected": p["prompt"] + t["rejected"]}
                    for p, t in zip(pairs, trl)]  # fmt: skip
        assert _items(write_jsonl(tmp_path / "implicit.jsonl", implicit), "dpo") == expected
    _trains(tmp_path, saved, "dpo")


def _cache_as_hub_dataset(tmp_path: Path, rows: list[dict], repo_id: str) -> Path:
    """The layout datasets leaves in its cache after downloading ``repo_id`` from the Hub."""
    source = write_jsonl(tmp_path / "hub.jsonl", rows)
    builder = datasets.load_dataset_builder(
        "json", data_files={"train": str(source)}, cache_dir=str(tmp_path / "build")
    )
    builder.download_and_prepare()
    namespace, name = repo_id.split("/")
    cached = tmp_path / "hf-cache" / f"{namespace}___{name}" / "default" / "0.0.0" / "0123abcd"
    shutil.copytree(builder.cache_dir, cached)
    for arrow in cached.glob("json-*.arrow"):
        arrow.rename(cached / arrow.name.replace("json-", f"{name}-"))
    return tmp_path / "hf-cache"


def test_a_cached_hub_dataset_id_gives_the_jsonl_examples_and_trains(tmp_path, monkeypatch):
    rows = [{**r, "completion": _assistant(r["completion"])} for r in _rows(True)]
    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", _cache_as_hub_dataset(tmp_path, rows, "acme/votes")
    )
    expected = _items(write_jsonl(tmp_path / "thumbs.jsonl", _rows(True)))
    assert _items("acme/votes") == expected
    assert _items("hf:acme/votes:train") == expected
    _trains(tmp_path, "hf:acme/votes")


def test_a_dataset_id_not_in_the_cache_is_a_clear_error_at_once(tmp_path, monkeypatch):
    import socket

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty-cache")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    attempts = []  # offline means no connection is even tried, so nothing can hang on the network
    real_lookup, real_connect = socket.getaddrinfo, socket.socket.connect
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda host, *a, **k: attempts.append(host) or real_lookup(host, *a, **k)
    )
    monkeypatch.setattr(
        socket.socket, "connect", lambda self, to: attempts.append(to) or real_connect(self, to)
    )
    with pytest.raises(ThumbsError, match="not in the local datasets cache") as err:
        load_examples("hf:acme/never-downloaded")
    assert "load_dataset('acme/never-downloaded')" in str(err.value)
    assert attempts == []
    with pytest.raises(ThumbsError, match="no file or folder 'acme/never-downloaded', and no dataset"):
        load_examples("acme/never-downloaded")  # a bare id may also be a mistyped path


def test_conversational_completion_must_end_with_the_assistant(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "user", "content": "x"}],
             "label": True}]  # fmt: skip
    with pytest.raises(ThumbsError, match="assistant message") as err:
        load_examples(str(write_jsonl(tmp_path / "bad.jsonl", rows)))
    assert "row 1" in str(err.value) and "completion" in str(err.value)


def test_a_datasetdict_without_a_train_split_names_its_splits(tmp_path):
    saved = tmp_path / "saved"
    data = datasets.Dataset.from_list(_rows(False, 4))
    datasets.DatasetDict({"train_prefs": data, "test_prefs": data}).save_to_disk(str(saved))
    with pytest.raises(ThumbsError, match="train_prefs, test_prefs"):
        load_examples(str(saved), split="train")
