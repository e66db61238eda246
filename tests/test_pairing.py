"""DPO and SFT in the shared loop: pairing from thumbs data, and learning on a toy task."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import torch

from tests.helpers import tiny_config, toy_feedback, write_jsonl
from thumbs.models import load_model, load_tokenizer
from thumbs.tokenize import Encoder, collate, sequence
from thumbs.train.logprobs import completion_logps
from thumbs.train.loop import train
from thumbs.train.pairing import feedback_from_pairs, pairs_from_feedback


def _table(rows):
    return pa.table(
        {
            "prompt": [r[0] for r in rows],
            "completion": [r[1] for r in rows],
            "label": [r[2] for r in rows],
            "weight": [1.0] * len(rows),
        }
    )


def test_prompts_with_one_class_give_no_pairs_and_are_counted():
    table = _table(
        [("p1", "a", True), ("p1", "b", True), ("p2", "c", True), ("p2", "d", False), ("p3", "e", False)]
    )
    pairs, counts = pairs_from_feedback(table)
    assert pairs.to_pylist() == [{"prompt": "p2", "chosen": "c", "rejected": "d", "weight": 1.0}]
    assert counts["unusable_examples"] == 3  # p1's two and p3's one
    assert counts["prompts_with_both_classes"] == 1


def test_all_pairing_is_capped_per_prompt():
    rows = [("p", f"up{i}", True) for i in range(5)] + [("p", f"down{i}", False) for i in range(4)]
    pairs, _ = pairs_from_feedback(_table(rows), pairing="all", max_pairs_per_prompt=7)
    assert pairs.num_rows == 7
    assert len({(r["chosen"], r["rejected"]) for r in pairs.to_pylist()}) == 7
    uncapped, _ = pairs_from_feedback(_table(rows), pairing="all", max_pairs_per_prompt=100)
    assert uncapped.num_rows == 20


def test_matched_pairing_uses_each_completion_once():
    rows = [("p", f"up{i}", True) for i in range(5)] + [("p", f"down{i}", False) for i in range(3)]
    pairs, _ = pairs_from_feedback(_table(rows), pairing="matched")
    assert pairs.num_rows == 3
    assert len(set(pairs["chosen"].to_pylist())) == 3 and len(set(pairs["rejected"].to_pylist())) == 3


def test_chat_prompts_differing_only_in_whitespace_pair_together():
    a = json.dumps([{"role": "user", "content": "Review  the film."}])
    b = json.dumps([{"role": "user", "content": " Review the film. "}])
    pairs, counts = pairs_from_feedback(_table([(a, "good", True), (b, "bad", False)]))
    assert pairs.num_rows == 1 and counts["unusable_examples"] == 0


def test_a_completion_voted_both_ways_is_not_paired_with_itself():
    pairs, counts = pairs_from_feedback(_table([("p", "same", True), ("p", "same", False)]))
    assert pairs.num_rows == 0 and counts["unusable_examples"] == 2


def test_pairs_become_interleaved_kto_examples():
    pairs = pa.table(
        {"prompt": ["p", "q"], "chosen": ["a", "b"], "rejected": ["x", "y"], "weight": [1.0, 2.0]}
    )
    examples = feedback_from_pairs(pairs)
    assert examples["label"].to_pylist() == [True, False, True, False]
    assert examples["completion"].to_pylist() == ["a", "x", "b", "y"]
    assert examples["weight"].to_pylist() == [1.0, 1.0, 2.0, 2.0]


def _sequence_logps(model_path, tokenizer, prompts, completions):
    encoder = Encoder(tokenizer, 128)
    seqs = [sequence(encoder.prompt_ids(p), c) for p, c in zip(prompts, encoder.completion_ids(completions))]
    with torch.no_grad():
        return completion_logps(load_model(model_path), **collate(seqs, tokenizer.pad_token_id))[0]


def _held_out_pairs(n, seed):
    rows = toy_feedback(4 * n, seed=seed)
    ups = [r for r in rows if r["label"]][:n]
    downs = [r for r in rows if not r["label"]][:n]
    return [u["prompt"] for u in ups], [u["completion"] for u in ups], [d["completion"] for d in downs]


def test_dpo_learns_to_prefer_chosen_on_held_out_pairs(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", toy_feedback(400, seed=11))
    cfg = tiny_config(
        tmp_path, data, method="dpo", dpo__max_pairs_per_prompt=40, train__batch_size=8, train__max_steps=40,
        train__learning_rate=3e-3, model__lora__enabled=False,
    )  # fmt: skip
    run = train(cfg)
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["pairing"]["pairs"] > 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"} <= metrics[-1].keys()
    tokenizer = load_tokenizer(str(run / "final"))
    prompts, chosen, rejected = _held_out_pairs(60, seed=77)
    margin = []
    for path in (str(run / "final"), cfg.model.name_or_path):
        margin.append(
            _sequence_logps(path, tokenizer, prompts, chosen)
            - _sequence_logps(path, tokenizer, prompts, rejected)
        )
    accuracy = ((margin[0] - margin[1]) > 0).float().mean().item()  # implicit reward prefers chosen
    assert accuracy > 0.8, accuracy


def test_sft_raises_the_likelihood_of_desirable_completions(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", toy_feedback(200, seed=12))
    cfg = tiny_config(
        tmp_path, data, method="sft", train__batch_size=8, train__max_steps=30, train__learning_rate=3e-3,
        model__lora__enabled=False,
    )  # fmt: skip
    run = train(cfg)
    assert (
        json.loads((run / "data_summary.json").read_text())["undesirable"] == 0
    )  # trained on thumbs-up only
    tokenizer = load_tokenizer(str(run / "final"))
    prompts, chosen, _ = _held_out_pairs(60, seed=78)
    after = _sequence_logps(str(run / "final"), tokenizer, prompts, chosen)
    before = _sequence_logps(cfg.model.name_or_path, tokenizer, prompts, chosen)
    assert ((after - before) > 0).float().mean().item() > 0.8


@pytest.mark.parametrize("example", ["examples/dpo.yaml", "examples/quickstart.yaml"])
def test_example_configs_are_valid(example):
    from thumbs.config import load_config

    cfg = load_config(example)
    assert cfg.model.name_or_path == "default" and cfg.data.train == "builtin:vader-movies"
