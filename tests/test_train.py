"""The training loop on tiny models: pairing for z0, one-class batches, learning, resume, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import tiny_config, toy_feedback, write_jsonl
from thumbs.data.examples import load_examples
from thumbs.models import load_model, load_tokenizer, tiny_model, tiny_tokenizer
from thumbs.tokenize import Encoder, collate, sequence
from thumbs.train import checkpoint as checkpoint_module
from thumbs.train import metrics as metrics_module
from thumbs.train.batches import epoch_microbatches
from thumbs.train.logprobs import completion_logps
from thumbs.train.loop import train
from thumbs.train.methods import build_items, kl_partners


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_kl_partner_is_never_the_example_itself(n):
    texts = [f"answer {i % 3}" for i in range(n)]  # duplicates too
    for seed in range(20):
        partner = kl_partners(["p"] * n, texts, seed)
        assert all(j != i for i, j in enumerate(partner))
        if len(set(texts)) > 1:  # a mismatched completion is a different text whenever one exists
            assert all(texts[j] != texts[i] for i, j in enumerate(partner))


def test_kl_sequences_pair_a_prompt_with_another_examples_completion():
    tokenizer = tiny_tokenizer()
    rows = toy_feedback(7, seed=1)
    table = load_examples_from_rows(rows)
    items = build_items("kto", table, Encoder(tokenizer, 256), seed=0)
    for i in range(7):
        target_ids, target_start = items.seqs["target"][i]
        kl_ids, kl_start = items.seqs["kl"][i]
        assert kl_ids[:kl_start] == target_ids[:target_start]  # same prompt
        assert kl_ids[kl_start:] != target_ids[target_start:]  # another completion


def load_examples_from_rows(rows, tmp=None):
    import pyarrow as pa

    return pa.table(
        {
            "prompt": [
                json.dumps(r["prompt"]) if isinstance(r["prompt"], list) else r["prompt"] for r in rows
            ],
            "completion": [r["completion"] for r in rows],
            "label": [r["label"] for r in rows],
            "weight": [1.0] * len(rows),
        }
    )


def test_chat_prompt_uses_template_and_completion_ends_with_eos():
    tokenizer = tiny_tokenizer()
    encoder = Encoder(tokenizer, max_length=40)
    messages = [{"role": "user", "content": "Review the film."}]
    prompt = encoder.prompt_ids(json.dumps(messages))
    assert prompt == list(tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
    (completion,) = encoder.completion_ids(["It was great."])
    assert completion[-1] == tokenizer.eos_token_id
    # too long: the prompt loses tokens from its left, the completion is kept whole
    fitted_prompt, fitted_completion = encoder.fit(prompt, completion)
    assert fitted_completion == completion and fitted_prompt == prompt[-(40 - len(completion)) :]
    assert encoder.truncated == 1
    batch = collate([sequence(fitted_prompt, fitted_completion)], tokenizer.pad_token_id)
    assert batch["completion_mask"].sum() == len(completion)


def test_chunked_logps_equal_full_log_softmax_with_gradients():
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    encoder = Encoder(tokenizer, 64)
    prompt = encoder.prompt_ids("Review the film:")
    seqs = [sequence(prompt, c) for c in encoder.completion_ids(["Great fun.", "Dull, very dull and slow."])]
    batch = collate(seqs, tokenizer.pad_token_id)
    ours, tokens = completion_logps(model, **batch, chunk_size=5)
    ours.sum().backward()
    grad_ours = model.lm_head.weight.grad.clone()
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    per_token = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[
        ..., 0
    ]
    naive = (per_token * batch["completion_mask"][:, 1:]).sum(-1)
    naive.sum().backward()
    assert torch.allclose(ours, naive, atol=1e-4)
    assert torch.allclose(grad_ours, model.lm_head.weight.grad, atol=1e-5)
    assert tokens.tolist() == [int(m.sum()) for m in batch["completion_mask"]]


def test_epochs_are_shuffled_with_the_seed_not_ordered_by_label():
    lengths = [10] * 50 + [20] * 50  # as if the file were sorted: all thumbs-up first
    first = epoch_microbatches(lengths, 10, epoch=0, seed=0, group=False)
    assert any(min(b) < 50 <= max(b) for b in first)  # classes mix inside microbatches
    assert first != epoch_microbatches(lengths, 10, epoch=1, seed=0, group=False)
    assert first == epoch_microbatches(lengths, 10, epoch=0, seed=0, group=False)


def test_batch_size_one_and_one_class_microbatches_train_finite(tmp_path):
    rows = [r for r in toy_feedback(40, seed=2) if r["label"]][:9]  # thumbs-up only, odd count
    data = write_jsonl(tmp_path / "up.jsonl", rows)
    cfg = tiny_config(tmp_path, data, train__batch_size=1, train__max_steps=5, kto__desirable_weight=1.0)
    run = train(cfg)
    metrics = _metrics(run)
    assert len(metrics) == 5
    for record in metrics:
        assert all(torch.isfinite(torch.tensor(float(record[k]))) for k in ("loss", "kl", "grad_norm"))
        assert record["grad_norm"] > 0


def test_kto_learns_a_reward_that_separates_held_out_feedback(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", toy_feedback(256, seed=3))
    held_out = toy_feedback(80, seed=99)
    cfg = tiny_config(
        tmp_path, data, train__batch_size=16, train__max_steps=40, train__learning_rate=3e-3,
        kto__beta=0.1, model__lora__enabled=False,
    )  # fmt: skip
    run = train(cfg)
    tokenizer = load_tokenizer(str(run / "final"))
    policy, reference = load_model(str(run / "final")), load_model(cfg.model.name_or_path)
    encoder = Encoder(tokenizer, 96)
    seqs = [sequence(encoder.prompt_ids(r["prompt"]), c) for r, c in
            zip(held_out, encoder.completion_ids([r["completion"] for r in held_out]))]  # fmt: skip
    batch = collate(seqs, tokenizer.pad_token_id)
    with torch.no_grad():
        reward = completion_logps(policy, **batch)[0] - completion_logps(reference, **batch)[0]
    labels = torch.tensor([r["label"] for r in held_out])
    pos, neg = reward[labels], reward[~labels]
    auc = (
        (pos[:, None] > neg[None, :]).float().mean() + 0.5 * (pos[:, None] == neg[None, :]).float().mean()
    ).item()
    assert auc > 0.8, auc


def test_resume_after_interrupt_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", toy_feedback(64, seed=4))
    full = train(
        tiny_config(tmp_path / "a", data, train__max_steps=6, train__grad_accum=2, model__lora__dropout=0.1)
    )

    real_log = metrics_module.Tally.record

    def interrupt_at_step_4(self, step, *args, **kwargs):
        if step == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C after step 4
        return real_log(self, step, *args, **kwargs)

    cfg = tiny_config(tmp_path / "b", data, train__max_steps=6, train__grad_accum=2, model__lora__dropout=0.1)
    monkeypatch.setattr(metrics_module.Tally, "record", interrupt_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert checkpoint_module.complete_checkpoints(cfg.output_dir) == [4]
    monkeypatch.setattr(metrics_module.Tally, "record", real_log)
    cfg = tiny_config(tmp_path / "b", data, train__max_steps=6, train__grad_accum=2, model__lora__dropout=0.1)
    resumed = train(cfg, resume=True)

    from safetensors.torch import load_file

    a = load_file(full / "final" / "adapter_model.safetensors")
    b = load_file(resumed / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert [m["step"] for m in _metrics(resumed)] == [1, 2, 3, 5, 6]  # step 4 was never logged: interrupted
    assert [m["loss"] for m in _metrics(resumed)][-1] == pytest.approx(_metrics(full)[-1]["loss"], abs=1e-6)


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_usable(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", toy_feedback(48, seed=5))
    cfg = tiny_config(tmp_path, data, train__max_steps=8, train__save_every=3)
    real_save = torch.save

    def crash_on_second(obj, path, *args, **kwargs):
        if str(path).endswith("state.pt") and "step-6" in str(path):
            raise OSError("disk full")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", crash_on_second)
    with pytest.raises(OSError):
        train(cfg)
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert checkpoint_module.complete_checkpoints(cfg.output_dir) == [3]
    run = train(tiny_config(tmp_path, data, train__max_steps=8, train__save_every=3), resume=True)
    assert _metrics(run)[-1]["step"] == 8


def test_final_model_loads_with_from_pretrained_lora_merged_and_full(tmp_path):
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "d.jsonl", toy_feedback(32, seed=6))
    lora_run = train(tiny_config(tmp_path / "lora", data, train__max_steps=2, model__merge_lora=True))
    assert (lora_run / "final" / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(lora_run / "final")
    AutoModelForCausalLM.from_pretrained(lora_run / "final" / "merged")
    full_run = train(tiny_config(tmp_path / "full", data, train__max_steps=2, model__lora__enabled=False))
    model = AutoModelForCausalLM.from_pretrained(full_run / "final")
    assert sum(p.numel() for p in model.parameters()) > 0
    summary = json.loads((full_run / "data_summary.json").read_text())
    assert summary["desirable"] + summary["undesirable"] == 32


def test_events_parquet_with_splits_trains_on_the_train_split(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = toy_feedback(40, seed=7)
    table = load_examples_from_rows(rows).append_column("split", pa.array(["train"] * 30 + ["eval"] * 10))
    pq.write_table(table, tmp_path / "events.parquet")
    assert load_examples(str(tmp_path), split="train").num_rows == 30
    run = train(tiny_config(tmp_path, tmp_path, train__max_steps=1))
    assert json.loads((run / "data_summary.json").read_text())["examples"] == 30


@pytest.mark.parametrize(
    "desirable,undesirable,n_up",
    [("auto", 1.0, 10), (1.0, "auto", 10), ("auto", "auto", 10), (1.0, "auto", 23), ("auto", 2.0, 23)],
)
def test_auto_class_weights_follow_the_papers_rule(desirable, undesirable, n_up):
    from thumbs.config import load_config
    from thumbs.train.setup import class_weights

    cfg = load_config(None, [f"kto.desirable_weight={desirable}", f"kto.undesirable_weight={undesirable}"])
    summary = {"desirable": n_up, "undesirable": 30 - n_up}
    class_weights(cfg, summary)
    ratio = summary["class_weights"]["weighted_ratio"]
    assert 1 - 1e-9 <= ratio <= 4 / 3 + 1e-9, (cfg.kto, ratio)
    for given, resolved in ((desirable, cfg.kto.desirable_weight), (undesirable, cfg.kto.undesirable_weight)):
        assert given == "auto" or resolved == given  # a weight the user gave is kept
