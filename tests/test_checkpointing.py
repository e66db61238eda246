"""Gradient checkpointing with the last layers left out (``model.uncheckpointed_layers``): those
layers run once per step instead of twice, the gradients and the run stay the same."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import tiny_config, toy_feedback, write_jsonl
from thumbs.errors import ThumbsError
from thumbs.models import tiny_model, tiny_tokenizer
from thumbs.tokenize import collate
from thumbs.train.logprobs import completion_logps
from thumbs.train.loop import train
from thumbs.train.setup import checkpoint_activations


def _cfg(tmp_path, **overrides):
    data = write_jsonl(tmp_path / "d.jsonl", toy_feedback(16, seed=4))
    return tiny_config(tmp_path, data, model__lora__enabled=False, **overrides)


def _step(tmp_path, keep: int | None):
    """Each decoder layer's forward calls and every gradient of one backward, with ``keep`` layers
    uncheckpointed (None: no checkpointing at all)."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    model = tiny_model(tokenizer, num_hidden_layers=4).train()
    sets = {"model__gradient_checkpointing": keep is not None, "model__uncheckpointed_layers": keep or 0}
    checkpoint_activations(model, _cfg(tmp_path, **sets))
    calls = [0] * 4
    for i, layer in enumerate(model.model.layers):  # the layer's own hooks stay outside its checkpoint
        layer.mlp.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    seqs = [(tokenizer.encode("why so " * (3 + k)), 4) for k in range(3)]
    logps, _ = completion_logps(model, **collate(seqs, tokenizer.pad_token_id))
    (logps * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    return calls, {name: p.grad for name, p in model.named_parameters()}


def test_the_last_layers_are_not_recomputed_and_the_gradients_stay_the_same(tmp_path):
    plain_calls, plain = _step(tmp_path, None)
    assert plain_calls == [1, 1, 1, 1]
    for keep, expected_calls in ((0, [2, 2, 2, 2]), (1, [2, 2, 2, 1]), (3, [2, 1, 1, 1])):
        calls, grads = _step(tmp_path, keep)
        assert calls == expected_calls, keep
        for name, grad in grads.items():
            torch.testing.assert_close(grad, plain[name], atol=1e-6, rtol=1e-5, msg=f"{name} ({keep})")


def test_more_layers_than_the_model_has_or_no_checkpointing_is_refused(tmp_path):
    model = tiny_model(tiny_tokenizer(), num_hidden_layers=2)
    with pytest.raises(ThumbsError, match="has 2 checkpointed layers") as err:
        checkpoint_activations(
            model, _cfg(tmp_path, model__gradient_checkpointing=True, model__uncheckpointed_layers=3)
        )
    assert "at most 2" in err.value.hint
    with pytest.raises(ThumbsError, match="needs model.gradient_checkpointing=true"):
        checkpoint_activations(model, _cfg(tmp_path, model__uncheckpointed_layers=1))


def test_a_kto_run_gives_the_same_losses_with_a_layer_uncheckpointed(tmp_path):
    losses = {}
    for keep in (0, 1):
        run = tmp_path / f"keep{keep}"
        run.mkdir()
        tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                "num_key_value_heads": 1}  # fmt: skip
        cfg = _cfg(
            run, model__gradient_checkpointing=True, model__uncheckpointed_layers=keep, model__tiny=tiny
        )
        train(cfg)
        lines = (run / "run" / "metrics.jsonl").read_text().splitlines()
        losses[keep] = [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]
    assert len(losses[0]) == 4
    assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)
