"""BCO and APO-zero in the shared loop: they learn, BCO's reward shift δ survives a resume and two
processes, and eval, the report and the model card name the method and its β."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_config, toy_feedback, write_jsonl
from tests.test_distributed import assert_same_training, thumbs_nproc, train_here
from thumbs.models import load_model, load_tokenizer
from thumbs.tokenize import Encoder, collate, sequence
from thumbs.train import checkpoint as checkpoint_module
from thumbs.train import methods as methods_module
from thumbs.train.logprobs import completion_logps
from thumbs.train.loop import train


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _saved_shift(run_dir: Path, step: int) -> dict:
    return torch.load(Path(run_dir) / "checkpoints" / f"step-{step}" / "state.pt", weights_only=True)[
        "method"
    ]


@pytest.mark.parametrize("method", ["bco", "apo_zero"])
def test_method_learns_a_reward_that_separates_held_out_feedback(tmp_path, method):
    """Class weights 'auto' and user balance on: the method honours both and still learns."""
    data = write_jsonl(tmp_path / "train.jsonl", toy_feedback(256, seed=3, p_up=0.4))
    held_out = toy_feedback(80, seed=99)
    cfg = tiny_config(
        tmp_path, data, method=method, train__batch_size=16, train__max_steps=40, train__learning_rate=3e-3,
        model__lora__enabled=False, data__user_balance="inverse",
        **{f"{method}__beta": 0.1, f"{method}__desirable_weight": "auto"},
    )  # fmt: skip
    run = train(cfg)
    summary = json.loads((run / "data_summary.json").read_text())
    assert 1 <= summary["class_weights"]["weighted_ratio"] <= 4 / 3  # the paper's rule, resolved
    assert summary["feedback_options"]["user_balance"]["mode"] == "inverse"
    record = _metrics(run)[-1]
    assert record["rewards/margin"] == pytest.approx(
        record["rewards/desirable"] - record["rewards/undesirable"]
    )
    assert ("reward_shift" in record) == (method == "bco")
    assert "kl" not in record  # no mismatched pass
    card = (run / "final" / "README.md").read_text()
    assert f"method: `{method}`, β = 0.1" in card and "class weights λ_D" in card
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


def test_bco_reward_shift_survives_ctrl_c_mid_step_and_resume(tmp_path, monkeypatch):
    """Ctrl-C during step 4's second microbatch: the checkpoint is of step 3 and its δ counts exactly
    the 3 steps' rewards (not the half step), and the resumed run ends as an uninterrupted one."""
    data = write_jsonl(tmp_path / "d.jsonl", toy_feedback(64, seed=4))
    common = {"method": "bco", "train__max_steps": 6, "train__grad_accum": 2, "bco__beta": 0.5}
    full = train(tiny_config(tmp_path / "a", data, train__save_every=3, **common))
    shifts = [m["reward_shift"] for m in _metrics(full)]
    assert len(set(shifts)) == len(shifts)  # δ moves every step: the comparison below can fail

    real_update = methods_module.RewardShift.update
    calls = []

    def interrupt_in_step_4(self, rewards, all_reduce=None):
        calls.append(1)
        if len(calls) == 8:  # 2 microbatches a step: the 8th is step 4's second
            raise KeyboardInterrupt
        return real_update(self, rewards, all_reduce)

    monkeypatch.setattr(methods_module.RewardShift, "update", interrupt_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path / "b", data, **common))
    monkeypatch.setattr(methods_module.RewardShift, "update", real_update)
    b = tmp_path / "b" / "run"
    assert checkpoint_module.complete_checkpoints(b) == [3]
    assert _saved_shift(b, 3) == pytest.approx(_saved_shift(full, 3))
    assert _saved_shift(b, 3)["reward_count"] == 3 * 2 * 4  # steps × microbatches × examples
    resumed = train(tiny_config(tmp_path / "b", data, **common), resume=True)
    assert [m["step"] for m in _metrics(resumed)] == [1, 2, 3, 4, 5, 6]
    assert [m["reward_shift"] for m in _metrics(resumed)] == pytest.approx(shifts, abs=1e-7)

    from safetensors.torch import load_file

    a, b = (load_file(r / "final" / "adapter_model.safetensors") for r in (full, resumed))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


@pytest.mark.timeout(360)
def test_bco_reward_shift_on_two_processes_matches_one_process_with_twice_the_batch(tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", toy_feedback(32, seed=4))
    common = {"method": "bco", "train__max_steps": 3, "train__grad_accum": 2, "train__save_every": 2}
    one = train_here(
        tiny_config(tmp_path / "one", data, train__batch_size=4, **common), tmp_path / "c1", monkeypatch
    )
    cfg = tiny_config(tmp_path / "two", data, train__batch_size=2, **common)
    result = thumbs_nproc(cfg, tmp_path / "c2")
    assert result.returncode == 0, result.stderr[-3000:]
    two = Path(cfg.output_dir)
    assert_same_training(one, two)
    a, b = _metrics(one), _metrics(two)
    assert [m["reward_shift"] for m in b] == pytest.approx([m["reward_shift"] for m in a], abs=1e-6)
    # the all-reduced δ state, checkpointed by the main process: every reward of both processes
    assert _saved_shift(two, 2)["reward_count"] == 2 * 2 * 4
    assert _saved_shift(two, 2)["reward_sum"] == pytest.approx(_saved_shift(one, 2)["reward_sum"], abs=1e-5)


@pytest.mark.parametrize("method", ["bco", "apo_zero"])
def test_eval_and_report_show_the_method_and_its_beta(tmp_path, method):
    from thumbs.config import load_config
    from thumbs.eval.evaluation import _beta
    from thumbs.report.runs import Run, headline

    cfg = load_config(None, [f"method={method}", f"{method}.beta=0.3"])
    assert _beta(cfg, None) == 0.3
    row = headline(Run("r", tmp_path, config=cfg.model_dump(mode="json")))
    assert row["method"] == f"{method} β=0.3"


def test_bco_auto_weights_without_one_class_is_a_clear_error(tmp_path):
    from thumbs.errors import ThumbsError

    rows = [r for r in toy_feedback(40, seed=2) if r["label"]][:8]
    data = write_jsonl(tmp_path / "up.jsonl", rows)
    with pytest.raises(ThumbsError, match="bco.desirable_weight"):
        train(tiny_config(tmp_path, data, method="bco", bco__undesirable_weight="auto"))


def test_resuming_another_methods_checkpoint_as_bco_is_a_clear_error(tmp_path):
    from thumbs.errors import ThumbsError

    data = write_jsonl(tmp_path / "d.jsonl", toy_feedback(32, seed=1))
    train(tiny_config(tmp_path, data, train__max_steps=4, train__save_every=2))  # KTO: no method state
    cfg = tiny_config(tmp_path, data, method="bco", train__max_steps=4, train__save_every=2)
    # --resume compares the checkpoint's config first (method: kto); the method-state check stays behind it
    with pytest.raises(ThumbsError, match="not the run in the folder: method: 'kto' in the run, 'bco' now"):
        train(cfg, resume=True)
