"""KTO's KL pass continues the grad pass's prompts: the same log-probs as running each KL sequence whole."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tests.helpers import tiny_config, toy_feedback, write_jsonl
from thumbs.models import tiny_model, tiny_tokenizer
from thumbs.tokenize import Encoder, pack_shared, sequence
from thumbs.train import prefix
from thumbs.train.logprobs import completion_logps


def _kto_seqs(n: int, seed: int, max_length: int = 400, shared_prompts: bool = False):
    """Targets (prompt + own completion) and KL sequences (the same prompt + the previous example's
    completion), as ``build_items`` makes them; with ``shared_prompts`` pairs of examples answer one prompt."""
    rng = random.Random(seed)
    tokenizer = tiny_tokenizer()
    encoder = Encoder(tokenizer, max_length)
    prompts = [
        encoder.prompt_ids(f"Question {i // 2 if shared_prompts else i}: " + "why " * rng.randint(1, 12))
        for i in range(n)
    ]
    completions = encoder.completion_ids(["because " * rng.randint(1, 30) + "." for _ in range(n)])
    target = [sequence(*encoder.fit(p, c)) for p, c in zip(prompts, completions)]
    kl = [sequence(*encoder.fit(prompts[i], completions[i - 1])) for i in range(n)]
    return tokenizer, target, kl


def _continued(model, tokenizer, target, kl, grad: bool):
    """The KL log-probs the way the training step computes them: a grad pass over ``target`` that
    records, then a no-grad pass over what follows each recorded prompt."""
    lengths = [prefix.shared_length(k, t) for k, t in zip(kl, target)]
    record = prefix.Record({i: n for i, n in enumerate(lengths) if n})
    batch = pack_shared(target, tokenizer.pad_token_id)
    record.locate(batch)
    with torch.set_grad_enabled(grad):
        own, _ = completion_logps(model, **batch, prefix=record, chunk_size=16)
    source = {i: i for i, n in enumerate(lengths) if n and i in record.spans}
    lengths = [n if i in source else 0 for i, n in enumerate(lengths)]
    cont = prefix.continuation_batch(kl, lengths, tokenizer.pad_token_id)
    cont["prefix"] = prefix.Continuation(record, cont, source, dict(enumerate(lengths)))
    with torch.no_grad():
        logps, tokens = completion_logps(model, **cont, chunk_size=16)
    return own, logps, tokens, source


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("shared_prompts", [False, True])
def test_continued_kl_logps_equal_whole_sequences(monkeypatch, per_row, shared_prompts):
    from thumbs.train import logprobs

    monkeypatch.setattr(logprobs, "PER_ROW_MIN_WIDTH", 0 if per_row else 10**9)
    if not per_row:  # every pass one batched call, as on a GPU (a CPU grad pass joins its rows)
        monkeypatch.setattr(logprobs, "_one_row_fits", lambda *a: False)
    tokenizer, target, kl = _kto_seqs(9, seed=4, shared_prompts=shared_prompts)
    model = tiny_model(tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=3)
    assert prefix.supported(model)
    with torch.no_grad():
        whole, whole_tokens = completion_logps(
            model, **pack_shared(kl, tokenizer.pad_token_id), chunk_size=16
        )
    plain, _ = completion_logps(
        model, **pack_shared(target, tokenizer.pad_token_id), chunk_size=16
    )  # a grad pass
    own, logps, tokens, source = _continued(model, tokenizer, target, kl, grad=True)
    assert len(source) == len(kl)  # every KL prompt is its example's: all continued
    assert tokens.tolist() == whole_tokens.tolist()  # every completion token counted, the first included
    torch.testing.assert_close(logps, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        own, plain.detach(), atol=0, rtol=0
    )  # recording leaves the grad pass as it was
    assert prefix._ACTIVE is None and model.config._attn_implementation == "sdpa"  # given back


def test_a_kl_prompt_truncated_unlike_its_example_runs_whole():
    # max_length cuts the prompt from the left by how long the completion is: the long KL completion
    # of example 0 leaves less of its prompt than example 0's own short completion does
    tokenizer, target, kl = _kto_seqs(6, seed=1, max_length=200)
    lengths = [prefix.shared_length(k, t) for k, t in zip(kl, target)]
    assert 0 in lengths and max(lengths) > 1  # some continued, some not
    model = tiny_model(tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    with torch.no_grad():
        whole, _ = completion_logps(model, **pack_shared(kl, tokenizer.pad_token_id), chunk_size=16)
    _, logps, _, source = _continued(model, tokenizer, target, kl, grad=False)
    assert set(source) == {i for i, n in enumerate(lengths) if n}
    torch.testing.assert_close(logps, whole, atol=1e-5, rtol=1e-5)


def test_only_plain_sdpa_is_continued():
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    model.config._attn_implementation = "eager"
    assert not prefix.supported(model)
    model.config._attn_implementation = "sdpa"
    model.config.sliding_window, model.config.use_sliding_window = 16, True
    assert not prefix.supported(model)


@pytest.mark.parametrize("joined", [False, True], ids=["batched", "one-row"])
def test_kto_training_with_and_without_continuing_gives_the_same_run(tmp_path, monkeypatch, joined):
    """The whole step: the same losses and KL, step after step, whether the KL pass continues the
    grad pass's prompts or runs every KL sequence whole; and (``joined``) whether the grad pass runs
    its rows as one row (``thumbs.train.rows``, recording each row's prompts) or one at a time."""
    from thumbs.train import logprobs
    from thumbs.train import rows as row_layout
    from thumbs.train.loop import train

    joins = []
    if joined:  # these rows are narrow: let them take the CPU's row-by-row path
        monkeypatch.setattr(logprobs, "PER_ROW_MIN_WIDTH", 0)
        one_row = row_layout.one_row
        monkeypatch.setattr(row_layout, "one_row", lambda *a, **k: joins.append(1) or one_row(*a, **k))

    rows = toy_feedback(24, seed=2)
    for i, row in enumerate(rows):  # varied lengths, so rows hold several sequences
        row["completion"] += " Really." * (i % 5)
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    runs = {}
    for mode in ("continued", "whole", "separate rows") if joined else ("continued", "whole"):
        if mode == "whole":
            monkeypatch.setattr(prefix, "supported", lambda model: False)
        if mode == "separate rows":
            monkeypatch.undo()
            monkeypatch.setattr(logprobs, "PER_ROW_MIN_WIDTH", 0)
            monkeypatch.setattr(logprobs, "_one_row_fits", lambda *a: False)
        cfg = tiny_config(
            tmp_path / mode, data, method="kto", train__max_steps=6, train__batch_size=4,
            train__learning_rate=1e-2, model__lora__enabled=False,
        )  # fmt: skip
        out = train(cfg)
        runs[mode] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(runs["continued"]) == len(runs["whole"]) == 6
    for other in set(runs) - {"continued"}:
        for a, b in zip(runs["continued"], runs[other]):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6), other
            assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-5), other
    assert any(r["kl"] > 1 for r in runs["continued"])  # z0 is not clamped to 0 throughout: it is compared
    assert len(joins) >= (6 if joined else 0)  # every grad pass of the joined runs was one row
