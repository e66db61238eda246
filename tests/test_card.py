"""final/README.md: a Hub model card with valid metadata, the method and β, the data and its
remedies, the training settings, and the eval numbers once thumbs eval has run."""

from __future__ import annotations

import yaml

from tests.helpers import tiny_config, toy_feedback, write_jsonl
from thumbs.eval.evaluation import evaluate
from thumbs.train.loop import train


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    meta, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(meta)


def test_kto_card_has_hub_metadata_method_data_and_then_the_eval(tmp_path):
    from huggingface_hub import ModelCard

    rows = toy_feedback(40, p_up=0.7)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = tiny_config(tmp_path, data, kto__beta=0.25, kto__undesirable_weight="auto",
                      data__user_balance="inverse")  # fmt: skip
    run = train(cfg)
    card_path = run / "final" / "README.md"
    text = card_path.read_text()
    meta = _front_matter(text)
    assert meta["library_name"] == "peft"
    assert {"thumbs", "kto", "lora"} <= set(meta["tags"])
    assert "base_model" not in meta  # a tiny model built in the run folder has no Hub id
    card = ModelCard.load(card_path)  # the Hub's own parser accepts it
    assert card.data.library_name == "peft"
    ups = sum(r["label"] for r in rows)
    assert "β = 0.25" in text
    assert f"votes trained on: 40 ({ups} up, {40 - ups} down" in text
    assert "class weights λ_D = 1" in text and "user_balance: inverse" in text
    assert "Not evaluated yet" in text

    result = evaluate(run, prompts=["Review the film:"], n=4, max_new_tokens=6, batch_size=4, progress=False)
    text = card_path.read_text()
    assert _front_matter(text)["library_name"] == "peft"
    assert (
        f"{result['win_rate']:.3f} [{result['win_rate_ci'][0]:.3f}, {result['win_rate_ci'][1]:.3f}]" in text
    )
    assert "Not evaluated yet" not in text and "judge `vader`, n = 4" in text


def test_dpo_card_names_beta_and_the_pairs(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", toy_feedback(40))
    cfg = tiny_config(
        tmp_path, data, method="dpo", dpo__beta=0.3, train__max_steps=2, model__lora__enabled=False
    )
    run = train(cfg)
    text = (run / "final" / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["library_name"] == "transformers" and "dpo" in meta["tags"]
    assert "β = 0.3" in text and "DPO pairs:" in text and "full fine-tuning" in text


def test_hub_ids_go_into_the_metadata(tmp_path):
    from thumbs.config import Config
    from thumbs.train.card import render

    cfg = Config.model_validate({"model": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"},
                                 "data": {"train": ["hf:trl-lib/kto-mix-14k:train", "feedback.jsonl"]}})  # fmt: skip
    meta = _front_matter(render(tmp_path, cfg))
    assert meta["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert meta["datasets"] == ["trl-lib/kto-mix-14k"]
    assert "license" not in meta  # not known for a model thumbs did not ship
    default = _front_matter(render(tmp_path, Config()))
    assert (
        default["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and default["license"] == "apache-2.0"
    )
