"""thumbs eval: statistics on known scores, sampling, KL, judges, LoRA runs and user errors.

Every model is a tiny random Llama saved in a temporary folder; nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from thumbs.config import Config
from thumbs.errors import ThumbsError
from thumbs.eval.evaluation import evaluate
from thumbs.eval.heldout import choose_prompts, heldout_feedback, read_prompts
from thumbs.eval.judges import make_judge, positive_index
from thumbs.eval.metrics import roc_auc, wilson_interval, win_rate
from thumbs.models import load_model, load_tokenizer, save_tiny

CHAT = json.dumps([{"role": "user", "content": "What did you think of the park?"}])
FAST = dict(n=8, max_new_tokens=12, batch_size=4, progress=False)


def write_events(path: Path) -> Path:
    """An ingest-style events table: train and eval rows, plain and chat prompts, both labels."""
    rows = []
    for i in range(24):
        prompt = ["Review the movie:", "Review the hotel:", CHAT][i % 3]
        good = i % 2 == 0
        rows.append(
            {
                "prompt": prompt,
                "completion": ("Wonderful, I loved it." if good else "Dull and boring.") + f" #{i}",
                "label": good,
                "user_id": f"u{i % 4}",
                "split": "eval" if i >= 16 else "train",
            }
        )
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def make_run(
    root: Path, name: str, start: Path, *, lora: bool = False, scale: float = 0.05, **config
) -> Path:
    """A run folder in the trainer's layout: config.yaml, metrics.jsonl, final/ (full model or adapter)."""
    run = root / name
    (run / "final").mkdir(parents=True)
    tokenizer = load_tokenizer(str(start))
    model = load_model(str(start))
    torch.manual_seed(zlib.crc32(name.encode()))
    if lora:
        from peft import LoraConfig, get_peft_model

        # init_lora_weights=False: B is random, so the adapter really changes the model.
        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
    else:
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * scale)
    model.save_pretrained(run / "final")
    tokenizer.save_pretrained(run / "final")
    tree = {
        "method": "kto",
        "output_dir": str(run),
        "model": {"name_or_path": str(start), "lora": {"enabled": lora}},
        "data": {"train": str(root / "events.parquet"), "max_length": 128},
    }
    for name_, value in config.items():  # train__learning_rate=... sets train.learning_rate
        section, _, key = name_.rpartition("__")
        (tree.setdefault(section, {}) if section else tree)[key] = value
    (run / "config.yaml").write_text(Config.model_validate(tree).to_yaml())
    with (run / "metrics.jsonl").open("w") as handle:
        for step in range(1, 7):
            record = {
                "step": step,
                "loss": 0.5 - 0.02 * step,
                "kl": 0.01 * step,
                "lr": 1e-4,
                "grad_norm": 1.0,
            }
            record.update({"rewards/desirable": 0.02 * step, "rewards/undesirable": -0.01 * step})
            record["rewards/margin"] = record["rewards/desirable"] - record["rewards/undesirable"]
            handle.write(json.dumps(record) + "\n")
    return run


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    save_tiny(root / "start", seed=0)
    write_events(root / "events.parquet")
    (root / "prompts.txt").write_text("Review the movie:\n\nSay something kind.\n")
    return root


# ---- statistics on known scores -------------------------------------------------------------------


def test_win_rate_counts_ties_as_half_with_a_wilson_interval():
    result = win_rate([1.0, 0.0, 0.5, 0.2, 0.9], [0.0, 0.0, 1.0, 0.2, 0.1])
    assert (result["wins"], result["ties"], result["losses"]) == (2, 2, 1)
    assert result["win_rate"] == pytest.approx(3 / 5)
    low, high = result["win_rate_ci"]
    # Wilson by hand for p = 0.6, n = 5, z = 1.96.
    z, p, n = 1.959963984540054, 0.6, 5
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (low, high) == pytest.approx((center - half, center + half))
    assert low < 0.6 < high

    every_win = win_rate([1.0] * 10, [0.0] * 10)
    assert every_win["win_rate"] == 1.0
    assert every_win["win_rate_ci"][1] == pytest.approx(1.0)
    assert every_win["win_rate_ci"][0] == pytest.approx(10 / (10 + z * z))  # Wilson's lower bound at p = 1
    all_ties = win_rate([0.3] * 40, [0.3] * 40)
    assert all_ties["win_rate"] == 0.5 and all_ties["ties"] == 40
    assert wilson_interval(20, 40)[0] < 0.5 < wilson_interval(20, 40)[1]


def test_roc_auc_on_known_scores_with_ties():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5, 0.9, 0.1], [True, False, True, False]) == pytest.approx(3.5 / 4)
    assert roc_auc([1.0, 1.0, 1.0, 1.0], [True, False, True, False]) == pytest.approx(0.5)
    assert roc_auc([0.2, 0.1], [True, True]) is None
    # Against the pairwise definition on scores with many ties.
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 200).astype(float), rng.random(200) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(scores, labels) == pytest.approx(pairwise)


# ---- prompts and held-out feedback ----------------------------------------------------------------


def test_prompts_from_text_and_jsonl_files_and_how_they_fill_n(tmp_path, workspace):
    assert read_prompts(workspace / "prompts.txt") == ["Review the movie:", "Say something kind."]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(
        json.dumps({"prompt": [{"role": "user", "content": "hi"}]}) + "\n" + json.dumps({"prompt": "x"})
    )
    assert read_prompts(jsonl) == [[{"role": "user", "content": "hi"}], "x"]
    distinct, chosen = choose_prompts(["a", " a ", "b"], 5, seed=0)
    assert distinct == 2 and chosen == ["a", "b", "a", "b", "a"]
    distinct, chosen = choose_prompts([f"p{i}" for i in range(10)], 3, seed=1)
    assert distinct == 3 and len(set(chosen)) == 3
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ThumbsError, match="empty"):
        read_prompts(tmp_path / "empty.txt")


def test_heldout_feedback_keeps_eval_split_and_expands_pairs(tmp_path, workspace):
    events = str(workspace / "events.parquet")
    rows = heldout_feedback([events], whole=False)
    assert len(rows) == 8 and {r["label"] for r in rows} == {True, False}
    no_split = tmp_path / "train.jsonl"
    no_split.write_text(json.dumps({"prompt": "p", "completion": "c", "label": True}) + "\n")
    assert heldout_feedback([str(no_split)], whole=False) is None  # training data is never held out
    assert len(heldout_feedback([str(no_split)], whole=True)) == 1
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "chosen": "good", "rejected": "bad"}) + "\n")
    assert heldout_feedback([str(pairs)], whole=True) == [
        {"prompt": "p", "completion": "good", "label": True},
        {"prompt": "p", "completion": "bad", "label": False},
    ]


# ---- sampling and KL ------------------------------------------------------------------------------


def test_inverse_cdf_sampler_draws_from_the_tempered_nucleus():
    from thumbs.eval.sampling import InverseCDFSampler

    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    rows = 20000
    uniforms = torch.rand(rows, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    prompt = torch.zeros(rows, 3, dtype=torch.long)

    def frequencies(temperature, top_p):
        picked = InverseCDFSampler(uniforms, 3, temperature, top_p)(prompt, logits.repeat(rows, 1))
        assert bool((torch.isfinite(picked).sum(-1) == 1).all())  # exactly one token allowed per row
        return torch.bincount(picked.argmax(-1), minlength=5).double() / rows

    assert frequencies(1.0, 1.0) == pytest.approx(torch.softmax(logits.double(), -1).tolist(), abs=0.01)
    assert frequencies(0.5, 1.0) == pytest.approx(torch.softmax(logits.double() / 0.5, -1).tolist(), abs=0.01)
    probs = torch.softmax(logits.double(), -1)  # 0.61, 0.22, 0.14, ...: a 0.8 nucleus keeps three tokens
    nucleus = torch.cat([probs[:3] / probs[:3].sum(), torch.zeros(2, dtype=torch.float64)])
    assert frequencies(1.0, 0.8) == pytest.approx(nucleus.tolist(), abs=0.01)
    assert torch.equal(
        InverseCDFSampler(uniforms, 3, 0.0, 1.0)(prompt, logits.repeat(rows, 1)), logits.repeat(rows, 1)
    )


def test_same_seeds_give_same_samples_and_zero_kl_when_policy_is_reference(workspace, tmp_path):
    start = workspace / "start"
    result = evaluate(
        start, reference=str(start), prompts=str(workspace / "prompts.txt"), out=tmp_path / "e.json", **FAST
    )
    samples = result["samples"]
    assert all(s["policy"] == s["reference"] for s in samples)
    assert len({s["policy"] for s in samples}) > 1  # different seeds per sample, not one repeated draw
    assert result["ties"] == 8 and result["win_rate"] == 0.5
    assert abs(result["kl"]["mean"]) < 1e-6
    # One model twice: zero up to float error (the policy's states come from sampling, the reference's from one pass).
    assert abs(result["kl_tokens"]["mean"]) < 1e-6 and result["kl_tokens"]["stderr"] < 1e-6
    assert result["reward_diff"]["mean"] == 0 and result["reward_diff"]["ci"] == [0.0, 0.0]
    assert result["length"]["policy"] == result["length"]["reference"]
    # A sample's random stream is its own: batch size does not change it.
    again = evaluate(
        start,
        reference=str(start),
        prompts=str(workspace / "prompts.txt"),
        out=tmp_path / "f.json",
        **{**FAST, "batch_size": 3},
    )
    assert [s["policy"] for s in again["samples"]] == [s["policy"] for s in samples]
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 8


def test_perturbed_full_model_run_has_positive_kl_and_writes_eval_json(workspace):
    run = make_run(workspace, "full", workspace / "start", scale=0.15)
    result = evaluate(run, **FAST)
    assert result["kl"]["mean"] > 0.05
    assert result["kl"]["mean"] > 2 * result["kl"]["stderr"]
    assert result["kl_tokens"]["mean"] > 0.05
    assert result["kl_tokens"]["stderr"] < result["kl"]["stderr"]
    diff = result["reward_diff"]
    policy_mean, reference_mean = (result["reward"][who]["mean"] for who in ("policy", "reference"))
    assert diff["mean"] == pytest.approx(policy_mean - reference_mean)
    assert diff["ci"][0] <= diff["mean"] <= diff["ci"][1] and diff["n"] == 8
    written = json.loads((run / "eval.json").read_text())
    for key in (
        "win_rate",
        "win_rate_ci",
        "reward",
        "kl",
        "kl_tokens",
        "reward_diff",
        "length",
        "heldout_auc",
        "n",
        "judge",
        "sampling",
        "samples",
    ):
        assert key in written, key
    assert written["judge"] == "vader" and written["reference"] == str(workspace / "start")
    assert written["prompts"]["distinct"] == 3  # the eval split's prompts, chat prompt included
    assert written["heldout"]["n"] == 8 and 0 <= written["heldout_auc"] <= 1
    assert written["sampling"]["temperature"] == 1.0 and written["sampling"]["max_new_tokens"] == 12
    for who in ("policy", "reference"):
        assert written["reward"][who]["stderr"] is not None
        assert 0 < written["length"][who] <= 12


def test_a_run_on_the_builtin_movie_task_samples_its_prompt(workspace):
    run = make_run(workspace, "builtin", workspace / "start", data__train="builtin:vader-movies")
    result = evaluate(run, **FAST)
    assert result["prompts"]["distinct"] == 1 and "builtin" in result["prompts"]["source"]
    assert "one-sentence movie review" in result["samples"][0]["prompt"]
    assert result["heldout_auc"] is None  # nothing of the builtin data is held out


def test_lora_run_is_evaluated_merged_or_with_its_adapter_off_to_the_same_numbers(
    workspace, tmp_path, monkeypatch
):
    import thumbs.eval.policy as policy

    run = make_run(workspace, "lora", workspace / "start", lora=True)
    merged = evaluate(run, **FAST, reuse=False)
    assert merged["policy_weights"] == "LoRA merged into a copy of its base"
    assert merged["reference"] == str(workspace / "start")
    assert merged["kl"]["mean"] > 0
    assert merged["heldout"]["desirable"] == 4 and merged["heldout"]["undesirable"] == 4
    assert merged["heldout_auc"] is not None
    assert (run / "eval.json").exists()
    # without room for a second copy, the reference is the policy with its adapter switched off
    monkeypatch.setattr(policy, "_room_for_copy", lambda model, device: False)
    adapter = evaluate(run, **FAST, reuse=False, out=tmp_path / "adapter.json")
    assert adapter["policy_weights"] == "LoRA adapter on its base, switched off for the reference"
    assert [s["policy"] for s in adapter["samples"]] == [s["policy"] for s in merged["samples"]]
    assert adapter["heldout_auc"] == merged["heldout_auc"]
    for key in ("kl", "kl_tokens"):
        assert adapter[key]["mean"] == pytest.approx(merged[key]["mean"], rel=1e-4, abs=1e-5)


def test_evaluations_from_one_base_reuse_its_samples_and_heldout_scores_to_the_bit(
    workspace, tmp_path, monkeypatch
):
    monkeypatch.setenv("THUMBS_CACHE", str(tmp_path / "cache"))
    first_run = make_run(workspace, "memo-a", workspace / "start", lora=True)
    second_run = make_run(workspace, "memo-b", workspace / "start", lora=True)
    first = evaluate(first_run, **FAST)
    assert not first["reference_samples_reused"] and not first["heldout"]["reference_reused"]
    second = evaluate(second_run, **FAST)
    assert second["reference_samples_reused"] and second["heldout"]["reference_reused"]
    fresh = evaluate(second_run, **FAST, reuse=False, out=tmp_path / "fresh.json")
    assert not fresh["reference_samples_reused"] and not fresh["heldout"]["reference_reused"]
    for key in ("reward", "reward_diff", "win_rate", "kl_tokens", "heldout", "length", "samples"):
        if key == "heldout":
            fresh[key]["reference_reused"] = True
        assert second[key] == fresh[key], key
    # a cached file cut short is recomputed, not trusted
    for path in (tmp_path / "cache" / "eval").iterdir():
        path.write_bytes(path.read_bytes()[:40])
    cut = evaluate(second_run, **FAST, out=tmp_path / "cut.json")
    assert not cut["reference_samples_reused"] and cut["reward_diff"] == fresh["reward_diff"]
    # another starting model (other weights, same shapes and names) is another key
    save_tiny(tmp_path / "other", seed=1)
    other = evaluate(
        make_run(tmp_path, "memo-c", tmp_path / "other", lora=True),
        **FAST,
        prompts=workspace / "prompts.txt",
        heldout=str(workspace / "events.parquet"),
    )
    assert not other["reference_samples_reused"] and not other["heldout"]["reference_reused"]


# ---- judges ---------------------------------------------------------------------------------------


def test_python_judge_scores_every_completion(workspace, tmp_path):
    module = tmp_path / "my_judge.py"
    module.write_text(
        "seen = []\n"
        "def letters(prompt, completion):\n"
        "    seen.append(prompt)\n"
        "    return float(sum(ch.isalpha() for ch in completion))\n"
    )
    run = make_run(workspace, "pyjudge", workspace / "start", scale=0.2)
    result = evaluate(run, judge=f"python:{module}:letters", out=tmp_path / "e.json", **FAST)
    assert result["judge"] == f"python:{module}:letters"
    for sample in result["samples"]:
        assert sample["policy_score"] == sum(ch.isalpha() for ch in sample["policy"])
        assert sample["reference_score"] == sum(ch.isalpha() for ch in sample["reference"])
    assert result["wins"] + result["ties"] + result["losses"] == 8
    judge = make_judge(lambda prompt, completion: len(completion))
    assert judge.score(["p"], ["abc"]) == [3.0]
    bad = make_judge(lambda prompt, completion: "high")
    with pytest.raises(ThumbsError, match="not a number"):
        bad.score(["p"], ["x"])


def test_hf_classifier_judge_gives_positive_class_probability(workspace, tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = load_tokenizer(str(workspace / "start"))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, num_labels=2, pad_token_id=tokenizer.pad_token_id,
        id2label={0: "POSITIVE", 1: "NEGATIVE"}, label2id={"POSITIVE": 0, "NEGATIVE": 1},
    )  # fmt: skip
    torch.manual_seed(0)
    classifier = LlamaForSequenceClassification(config)
    classifier.save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")

    judge = make_judge(f"hf:{tmp_path / 'clf'}")
    texts = ["lovely", "a much longer and rather awful text"]
    scores = judge.score(["p", "p"], texts)
    with torch.no_grad():  # one at a time, no padding: the batched scores must match
        expected = [
            torch.softmax(classifier(**tokenizer(t, return_tensors="pt")).logits, -1)[0, 0].item()
            for t in texts
        ]
    assert scores == pytest.approx(expected, abs=1e-5)  # label POSITIVE is class 0 here
    assert positive_index({0: "LABEL_0", 1: "LABEL_1"}, 2) == 1
    assert positive_index({0: "a", 1: "b", 2: "c"}, 3) == 2

    run = make_run(workspace, "hfjudge", workspace / "start")
    result = evaluate(run, judge=f"hf:{tmp_path / 'clf'}", out=tmp_path / "e.json", **FAST)
    assert all(0 < s["policy_score"] < 1 for s in result["samples"])


# ---- errors a user can act on ---------------------------------------------------------------------


def test_clear_errors_for_missing_run_no_prompts_and_bad_judge(workspace, tmp_path):
    with pytest.raises(ThumbsError, match="not found"):
        evaluate(tmp_path / "nope", **FAST)
    with pytest.raises(ThumbsError, match="--reference"):
        evaluate(workspace / "start", prompts=str(workspace / "prompts.txt"), **FAST)
    with pytest.raises(ThumbsError) as err:
        evaluate(workspace / "start", reference=str(workspace / "start"), **FAST)
    assert "no prompts" in err.value.message and "--prompts FILE" in err.value.message
    with pytest.raises(ThumbsError, match="unknown judge"):
        evaluate(workspace / "start", judge="gpt-judge", **FAST)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text(Config().to_yaml())
    with pytest.raises(ThumbsError, match="final/"):
        evaluate(unfinished, **FAST)

    from typer.testing import CliRunner

    from thumbs.cli import app

    result = CliRunner().invoke(app, ["eval", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "not found" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_after_real_training_kl_is_positive_and_heldout_auc_above_chance(tmp_path):
    """End to end with the trainer's own run folder: KTO (full fine-tune) on feedback with an eval split."""
    import pyarrow as pa

    from tests.helpers import tiny_config, toy_feedback
    from thumbs.train.loop import train

    rows = toy_feedback(240, seed=3)
    for i, row in enumerate(rows):
        row["prompt"] = json.dumps(row["prompt"]) if isinstance(row["prompt"], list) else row["prompt"]
        row["split"] = "eval" if i >= 200 else "train"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "events.parquet")
    cfg = tiny_config(
        tmp_path,
        tmp_path,
        train__batch_size=16,
        train__max_steps=20,
        train__learning_rate=3e-3,
        model__lora__enabled=False,
    )
    run = train(cfg)
    # Longer and more samples: the policy moved little on its own (random-text) samples.
    result = evaluate(run, **{**FAST, "n": 64, "batch_size": 32, "max_new_tokens": 32})
    assert result["kl"]["mean"] > 2 * result["kl"]["stderr"] > 0
    assert result["heldout"]["n"] == 40
    assert result["heldout_auc"] > 0.6, result["heldout_auc"]
    assert result["prompts"]["source"].startswith("eval-split")
