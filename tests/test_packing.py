"""Packed rows (several sequences per row, block-diagonal causal mask) give what padded rows give."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tests.helpers import tiny_config, toy_feedback, write_jsonl
from thumbs.models import tiny_model, tiny_tokenizer
from thumbs.tokenize import Encoder, collate, pack, sequence
from thumbs.train.logprobs import completion_logps
from thumbs.train.loop import train


def _seqs(n: int, seed: int = 0):
    """Prompt+completion sequences of very different lengths, as real feedback has."""
    rng = random.Random(seed)
    tokenizer = tiny_tokenizer()
    encoder = Encoder(tokenizer, 200)
    seqs = []
    for i in range(n):
        prompt = encoder.prompt_ids(f"Question {i}: " + "why " * rng.randint(1, 12))
        (completion,) = encoder.completion_ids(["because " * rng.randint(1, 20)])
        seqs.append(sequence(*encoder.fit(prompt, completion)))
    return tokenizer, seqs


def test_pack_lays_out_every_sequence_once_with_restarting_positions():
    tokenizer, seqs = _seqs(9)
    batch = pack(seqs, tokenizer.pad_token_id)
    rows, width = batch["input_ids"].shape
    assert width == max(len(ids) for ids, _ in seqs)
    assert rows < len(seqs)  # short sequences share rows
    real = batch["input_ids"] != tokenizer.pad_token_id
    assert int(real.sum()) == sum(len(ids) for ids, _ in seqs)
    assert batch["row_lengths"] == real.sum(1).tolist()  # real tokens first in each row, padding after
    assert all(not real[r, n:].any() for r, n in enumerate(batch["row_lengths"]))
    for i, (ids, start) in enumerate(seqs):
        where = (batch["segment_ids"] == i) & real
        assert int(where.sum()) == len(ids)
        row = int(where.any(1).nonzero()[0])
        assert batch["input_ids"][row][where[row]].tolist() == ids
        assert batch["position_ids"][row][where[row]].tolist() == list(range(len(ids)))
        assert int((batch["completion_mask"] & where).sum()) == len(ids) - start
    mask = batch["attention_mask"][:, 0]
    assert not torch.triu(mask, diagonal=1).any()  # causal
    assert mask.diagonal(dim1=1, dim2=2).all()  # every position sees itself: no fully masked query
    same = batch["segment_ids"].unsqueeze(2) == batch["segment_ids"].unsqueeze(1)
    assert not (mask & ~same & real.unsqueeze(2) & real.unsqueeze(1)).any()  # never across sequences


def test_packed_logps_and_gradients_equal_padded(monkeypatch):
    from thumbs.train import logprobs

    monkeypatch.setattr(logprobs, "PER_ROW_MIN_WIDTH", 0)  # these rows are narrow: run them one at a time too
    tokenizer, seqs = _seqs(7, seed=3)
    model = tiny_model(tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    padded, tokens_padded = completion_logps(model, **collate(seqs, tokenizer.pad_token_id), chunk_size=16)
    padded.pow(2).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    for per_row in (False, True):  # one batched call, or each row alone cut to its used width
        batch = pack(seqs, tokenizer.pad_token_id)
        if not per_row:
            batch.pop("row_lengths")
        model.zero_grad()
        packed, tokens_packed = completion_logps(model, **batch, chunk_size=16)
        packed.pow(2).sum().backward()
        assert torch.allclose(packed, padded, atol=1e-4, rtol=0), per_row
        assert tokens_packed.tolist() == tokens_padded.tolist()
        for name, p in model.named_parameters():
            # float32 rounding: the tied embedding's gradient reaches ~1e6 here, summed in another order
            scale = 1e-4 + 1e-6 * float(grads[name].abs().max())
            assert torch.allclose(p.grad, grads[name], atol=scale, rtol=1e-4), (name, per_row)
            assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("method", ["kto", "dpo"])
def test_packed_and_padded_training_give_the_same_run(tmp_path, method):
    rows = toy_feedback(24, seed=5)
    for i, row in enumerate(rows):  # varied lengths, so packing and padding differ
        row["completion"] += " Really." * (i % 7)
    if method == "dpo":
        ups, downs = [r for r in rows if r["label"]], [r for r in rows if not r["label"]]
        rows = [
            {"prompt": u["prompt"], "chosen": u["completion"], "rejected": d["completion"]}
            for u, d in zip(ups, downs)
        ]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    losses = {}
    for packing in (True, False):
        cfg = tiny_config(
            tmp_path / str(packing), data, method=method, train__packing=packing, train__max_steps=3,
            train__batch_size=3, model__lora__enabled=False,
        )  # fmt: skip
        run = train(cfg)
        losses[packing] = [
            json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
        ]
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)


def test_reference_pass_computes_a_repeated_sequence_once_with_the_same_values(monkeypatch):
    """KTO's mismatched pair (x_i, y_j) is example j itself when both answer one prompt: the
    reference pass computes each distinct sequence once and hands its value to every place it occurs."""
    from thumbs.train import reference
    from thumbs.train.methods import Items

    tokenizer, seqs = _seqs(6, seed=5)
    model = tiny_model(tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    kl = [seqs[(i + 2) % 6] for i in range(5)] + [seqs[0]]  # every KL sequence repeats a target
    items = Items({"target": seqs, "kl": kl}, torch.ones(6, dtype=torch.bool), torch.ones(6), {})
    computed = []
    real = reference.completion_logps
    monkeypatch.setattr(
        reference, "completion_logps", lambda m, **b: computed.append(b["num_segments"]) or real(m, **b)
    )
    out = reference.compute_reference_logps(
        model, items, ("target", "kl"), pad_id=tokenizer.pad_token_id, batch_size=4, chunk_size=16
    )
    assert sum(computed) == 6  # six distinct sequences, not twelve
    alone = torch.stack([completion_logps(model, **collate([s], tokenizer.pad_token_id))[0][0] for s in seqs])
    assert torch.allclose(out["target"], alone, atol=1e-4, rtol=0)
    assert torch.equal(out["kl"], out["target"][torch.tensor([2, 3, 4, 5, 0, 0])])


def test_a_run_on_the_same_votes_takes_reference_values_from_the_per_sequence_store(tmp_path, monkeypatch):
    """DPO's chosen and rejected are the KTO run's examples: the second run computes none of them
    again, and what it takes equals a fresh computation to float rounding; other weights find nothing."""
    from thumbs.train import reference
    from thumbs.train.methods import Items

    monkeypatch.setenv("THUMBS_CACHE", str(tmp_path / "cache"))
    tokenizer, seqs = _seqs(8, seed=7)
    model = tiny_model(tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    kto = Items(
        {"target": seqs, "kl": [seqs[(i + 1) % 8] for i in range(8)]},
        torch.ones(8, dtype=torch.bool),
        torch.ones(8),
        {},
    )
    dpo = Items(
        {"chosen": seqs[:4], "rejected": seqs[4:]}, torch.ones(4, dtype=torch.bool), torch.ones(4), {}
    )
    counted, said = [], []
    real = reference.completion_logps
    monkeypatch.setattr(
        reference, "completion_logps", lambda m, **b: counted.append(b["num_segments"]) or real(m, **b)
    )
    how = dict(pad_id=tokenizer.pad_token_id, batch_size=3, chunk_size=16, max_length=200, say=said.append)
    for name in "abc":
        (tmp_path / name).mkdir()
    first = reference.reference_logps(model, kto, ("target", "kl"), run_dir=tmp_path / "a", **how)
    assert sum(counted) == 8
    counted.clear()
    second = reference.reference_logps(model, dpo, ("chosen", "rejected"), run_dir=tmp_path / "b", **how)
    assert sum(counted) == 0 and any("8 of 8 distinct sequences" in line for line in said)
    assert torch.equal(second["chosen"], first["target"][:4]) and torch.equal(
        second["rejected"], first["target"][4:]
    )
    fresh = reference.compute_reference_logps(
        model, dpo, ("chosen", "rejected"), pad_id=tokenizer.pad_token_id, batch_size=3, chunk_size=16
    )
    assert all(torch.allclose(second[r], fresh[r], atol=1e-4, rtol=0) for r in ("chosen", "rejected"))
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    counted.clear()
    reference.reference_logps(model, dpo, ("chosen", "rejected"), run_dir=tmp_path / "c", **how)
    assert sum(counted) == 8


def _shared_seqs():
    """Three prompts answered two to four times each (DPO's pairs, one-prompt logs), mixed lengths."""
    rng = random.Random(11)
    tokenizer = tiny_tokenizer()
    encoder = Encoder(tokenizer, 200)
    seqs = []
    for q in range(3):
        prompt = encoder.prompt_ids(f"Question {q}: " + "why " * rng.randint(1, 12))
        for _ in range(2 + q):
            (completion,) = encoder.completion_ids(["because " * rng.randint(1, 20)])
            seqs.append(sequence(*encoder.fit(prompt, completion)))
    rng.shuffle(seqs)
    return tokenizer, seqs


@pytest.mark.parametrize("per_row", [False, True])
def test_shared_prompt_packing_gives_the_padded_logps_and_gradients(monkeypatch, per_row):
    from thumbs.tokenize import pack_shared
    from thumbs.train import logprobs

    if per_row:
        monkeypatch.setattr(logprobs, "PER_ROW_MIN_WIDTH", 0)
    tokenizer, seqs = _shared_seqs()
    model = tiny_model(tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    padded, tokens_padded = completion_logps(model, **collate(seqs, tokenizer.pad_token_id), chunk_size=16)
    padded.pow(2).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    batch = pack_shared(seqs, tokenizer.pad_token_id)
    if not per_row:
        batch.pop("row_lengths")
    real = batch["input_ids"] != tokenizer.pad_token_id
    assert int(real.sum()) < sum(len(ids) for ids, _ in seqs)  # each prompt laid out fewer times
    shared, tokens_shared = completion_logps(model, **batch, chunk_size=16)
    shared.pow(2).sum().backward()
    assert torch.allclose(shared, padded, atol=1e-4, rtol=0)
    assert tokens_shared.tolist() == tokens_padded.tolist()
    for name, p in model.named_parameters():  # a prompt's gradient is summed once, not per copy: rounding
        assert torch.allclose(p.grad, grads[name], atol=1e-5 * float(grads[name].abs().max()), rtol=1e-4), (
            name
        )
