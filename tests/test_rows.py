"""A packed batch's rows run as one row on a CPU (``thumbs.train.rows``): the log-probs and
gradients of padded rows, attention never crossing the original rows, in the forward and in the
checkpointed recompute alike."""

from __future__ import annotations

import pytest
import torch

from tests.test_packing import _seqs
from thumbs.models import tiny_model
from thumbs.tokenize import collate, pack, pack_shared
from thumbs.train import logprobs, rows
from thumbs.train.logprobs import completion_logps


def _model(tokenizer):
    # weights large enough that attention is peaked: a token that saw another row would show
    torch.manual_seed(0)
    return tiny_model(
        tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=2, initializer_range=0.3
    )


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("layout", [pack, pack_shared])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_one_row_gives_the_padded_logps_and_gradients(monkeypatch, layout, checkpointing):
    tokenizer, seqs = _seqs(
        9, seed=5
    )  # narrow rows, under PER_ROW_MIN_WIDTH: a grad pass joins them all the same
    model = _model(tokenizer).train()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    weights = torch.linspace(-1, 1, len(seqs))
    padded, _ = completion_logps(model, **collate(seqs, tokenizer.pad_token_id), chunk_size=16)
    (padded * weights).sum().backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)

    batch = layout(seqs, tokenizer.pad_token_id)
    assert len(batch["row_lengths"]) > 1 and batch["input_ids"].shape[1] < logprobs.PER_ROW_MIN_WIDTH
    widths = sorted(batch["row_lengths"])
    seen = []  # the query widths SDPA is called with, forward and recompute
    import transformers.integrations.sdpa_attention as sdpa_module

    original = sdpa_module.sdpa_attention_forward
    monkeypatch.setattr(sdpa_module, "sdpa_attention_forward",
                        lambda module, q, *a, **k: seen.append(q.shape[2]) or original(module, q, *a, **k))  # fmt: skip
    joined, _ = completion_logps(model, **batch, chunk_size=16)
    forward_calls = len(seen)
    (joined * weights).sum().backward()
    torch.testing.assert_close(joined, padded, atol=1e-4, rtol=0)
    for name, grad in _grads(model).items():
        scale = 1e-4 + 1e-6 * float(want[name].abs().max())
        torch.testing.assert_close(grad, want[name], atol=scale, rtol=1e-4, msg=name)
    layers = model.config.num_hidden_layers
    assert forward_calls == layers * len(widths)  # one call per original row and layer
    assert sorted(seen[:forward_calls])[::layers] == widths  # each at its own row's width
    assert len(seen) == forward_calls * (2 if checkpointing else 1)  # the recompute splits the same way
    assert sorted(seen[forward_calls:]) == sorted(seen[:forward_calls]) if checkpointing else True

    # the test can tell: attending across the rows, as one plain causal row would, moves the result
    with torch.no_grad():
        one = rows.one_row(**{k: batch.get(k) for k in ("input_ids", "attention_mask", "completion_mask",
                              "position_ids", "segment_ids", "source_ids")}, row_lengths=batch["row_lengths"],
                           first_row=0)  # fmt: skip
        one["attention_mask"] = torch.ones_like(one["attention_mask"]).tril()
        leaked, _ = completion_logps(model, **one, num_segments=len(seqs), chunk_size=16)
    assert (leaked - padded).abs().max() > 1e-2


def test_a_large_microbatch_is_joined_in_several_rows_with_the_same_result(monkeypatch):
    assert rows.groups([5, 3, 4, 9, 1], most=8) == [[0, 1], [2], [3], [4]]
    tokenizer, seqs = _seqs(9, seed=5)
    model = _model(tokenizer).train()
    batch = pack_shared(seqs, tokenizer.pad_token_id)
    whole, _ = completion_logps(model, **batch, chunk_size=16)
    calls = []
    one_row = rows.one_row
    monkeypatch.setattr(rows, "one_row", lambda *a, **k: calls.append(1) or one_row(*a, **k))
    monkeypatch.setattr(rows, "MAX_POSITIONS", max(batch["row_lengths"]) + 1)  # about a row per group
    split, _ = completion_logps(model, **batch, chunk_size=16)
    assert len(calls) == len(rows.groups(batch["row_lengths"])) > 1
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=0)


def test_no_grad_passes_and_gpus_keep_their_rows(monkeypatch):
    """Only a grad pass on a CPU joins its rows: the no-grad passes (reference, KL) gain nothing."""
    monkeypatch.setattr(logprobs, "PER_ROW_MIN_WIDTH", 0)
    tokenizer, seqs = _seqs(6, seed=2)
    model = _model(tokenizer)
    joined = []
    monkeypatch.setattr(
        rows, "one_row", lambda *a, **k: joined.append(1) or (_ for _ in ()).throw(AssertionError)
    )
    with torch.no_grad():
        completion_logps(model, **pack(seqs, tokenizer.pad_token_id))
    assert not joined
