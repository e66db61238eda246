"""The model card: ``final/README.md`` in the Hugging Face Hub's layout.

YAML metadata (built with ``huggingface_hub.ModelCardData``: base model, library, tags, datasets,
license where known) over what a reader of the model needs: the method and β, the data it saw
(votes, balance, the remedies applied, from ``data_summary.json``), the training settings, and
the eval numbers once ``thumbs eval`` has run on the run (it rewrites the card).
"""

from __future__ import annotations

import json
from pathlib import Path

CARD = "README.md"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF holds
DEFAULT_LICENSE = "apache-2.0"
METHOD_NAMES = {
    "kto": "KTO (Kahneman-Tversky Optimization, Ethayarajh et al. 2024)",
    "dpo": "DPO (Direct Preference Optimization, Rafailov et al. 2023)",
    "sft": "SFT on the thumbs-up examples",
    "bco": "BCO (Binary Classifier Optimization, Jung et al. 2024)",
    "apo_zero": "APO-zero, unpaired (Anchored Preference Optimization, D'Oosterlinck et al. 2024)",
}


def write_card(folder: Path, run_dir: Path, cfg, evaluation: dict | None = None) -> Path:
    """Write the card into ``folder`` (the final model being assembled, or ``final/`` itself)."""
    from thumbs.folders import write_text

    return write_text(Path(folder) / CARD, render(run_dir, cfg, evaluation))


def update_card(run_dir: str | Path, evaluation: dict) -> Path | None:
    """After ``thumbs eval``: the run's card again, with the eval numbers."""
    from thumbs.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "final").is_dir() or not (run_dir / "config.yaml").exists():
        return None
    return write_card(run_dir / "final", run_dir, load_config(run_dir / "config.yaml"), evaluation)


def base_model(cfg, run_dir: Path) -> str | None:
    """The starting model's Hub id, when it has one (a tiny model or a local folder has none)."""
    from thumbs.models import DEFAULT_MODEL_NAME
    from thumbs.paths import cache_dir

    source = cfg.model.name_or_path
    if source.lower() in ("default", "smollm2", "smollm2-135m-instruct"):
        return DEFAULT_HUB_ID
    path = Path(source)
    if path.exists():  # the converted default model, or a folder of the user's (no id to give)
        return (
            DEFAULT_HUB_ID if path.resolve() == (cache_dir("models") / DEFAULT_MODEL_NAME).resolve() else None
        )
    return source  # not on disk: a Hub id


def datasets_of(cfg) -> list[str]:
    """Training data that is a Hub dataset id (``hf:ID`` or an id not found on disk)."""
    sources = [cfg.data.train] if isinstance(cfg.data.train, str) else cfg.data.train
    found = []
    for source in sources:
        name = source[3:] if source.startswith("hf:") else source
        if source.startswith("hf:") or (
            "/" in name and not Path(name).exists() and not name.startswith(("builtin:", "/", "."))
        ):
            found.append(name.split(":")[0])
    return found


def render(run_dir: Path, cfg, evaluation: dict | None = None) -> str:
    from huggingface_hub import ModelCardData

    run_dir = Path(run_dir)
    summary = _read_json(run_dir / "data_summary.json")
    base = base_model(cfg, run_dir)
    lora = cfg.model.lora.enabled
    tags = ["thumbs", cfg.method, "binary-feedback" if cfg.method != "dpo" else "preference"]
    tags += ["lora"] if lora else []
    data = ModelCardData(
        base_model=base,
        library_name="peft" if lora else "transformers",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=datasets_of(cfg) or None,
        license=DEFAULT_LICENSE if base == DEFAULT_HUB_ID else None,
    )
    lines = ["---", data.to_yaml(), "---", "", f"# {run_dir.resolve().name}", ""]
    start = base or f"a local model ({cfg.model.name_or_path})"
    if Path(cfg.model.name_or_path).resolve() == (run_dir / "base_model").resolve():
        start = "a tiny random model built for the run (`model.name_or_path: tiny`)"
    lines += [
        f"Fine-tuned from **{start}** with **{METHOD_NAMES[cfg.method]}** by thumbs, "
        "from thumbs-up/down feedback. "
        + ("A LoRA adapter: load it with `peft.AutoPeftModelForCausalLM.from_pretrained`." if lora else
           "A full model: load it with `transformers.AutoModelForCausalLM.from_pretrained`."),
        "",
    ]  # fmt: skip
    lines += ["## Method", "", *_method(cfg), "", "## Data", "", *_data(cfg, summary), ""]
    lines += ["## Training", "", *_training(cfg, run_dir), ""]
    lines += ["## Evaluation", "", *_evaluation(evaluation), ""]
    return "\n".join(lines)


def _method(cfg) -> list[str]:
    if cfg.method in ("kto", "bco", "apo_zero"):
        k = getattr(cfg, cfg.method)
        shift = " (reward shift δ: the running mean of every implied reward)" if cfg.method == "bco" else ""
        return [
            f"- method: `{cfg.method}`, β = {k.beta}{shift}",
            f"- class weights: λ_D = {_num(k.desirable_weight)}, λ_U = {_num(k.undesirable_weight)}",
        ]
    if cfg.method == "dpo":
        d = cfg.dpo
        return [
            f"- method: `dpo` (sigmoid loss), β = {d.beta}, label smoothing {d.label_smoothing}",
            f"- pairs from votes: `{d.pairing}`, at most {d.max_pairs_per_prompt} per prompt",
        ]
    return ["- method: `sft` (negative log-likelihood of the thumbs-up completions; no β)"]


def _data(cfg, summary: dict) -> list[str]:
    sources = [cfg.data.train] if isinstance(cfg.data.train, str) else cfg.data.train
    lines = [f"- source: {', '.join(f'`{s}`' for s in sources)}"]
    if "source_rows" in summary:
        lines.append(f"- rows read: {summary['source_rows']:,}")
    if "desirable" in summary:
        up, down = summary["desirable"], summary["undesirable"]
        share = up / (up + down) if up + down else float("nan")
        lines.append(f"- votes trained on: {up + down:,} ({up:,} up, {down:,} down; {share:.1%} up)")
    pairing = summary.get("pairing")
    if pairing:
        lines.append(
            f"- DPO pairs: {pairing['pairs']:,} from {pairing['feedback_examples']:,} votes on "
            f"{pairing['prompts']:,} prompts; {pairing['unusable_examples']:,} votes unusable (one class per prompt)"
        )
    elif summary.get("paired_input"):
        lines.append(f"- preference pairs: {summary.get('examples', 0):,}")
    lines += [f"- remedy: {text}" for text in _remedies(cfg, summary)] or ["- remedies: none applied"]
    truncated = summary.get("truncated_examples", summary.get("truncated_sequences"))
    if truncated:
        lines.append(f"- truncated to {cfg.data.max_length} tokens: {truncated:,}")
    return lines


def _remedies(cfg, summary: dict) -> list[str]:
    options = summary.get("feedback_options") or {}
    found = []
    weights = summary.get("class_weights")
    if (
        cfg.method in ("kto", "bco", "apo_zero")
        and weights
        and (weights["desirable"], weights["undesirable"]) != (1.0, 1.0)
    ):
        ratio = weights.get("weighted_ratio")
        found.append(
            f"class weights λ_D = {_num(weights['desirable'])}, λ_U = {_num(weights['undesirable'])}"
            + (f" (λ_D·n_D/(λ_U·n_U) = {ratio:.2f})" if ratio else "")
        )
    if cfg.data.user_balance != "none":
        users = options.get("user_balance", {})
        found.append(f"`user_balance: {cfg.data.user_balance}` over {users.get('users', '?')} users")
    if cfg.data.aggregate != "votes":
        found.append(f"`aggregate: {cfg.data.aggregate}` (one example per prompt and completion)")
    if cfg.data.min_agreement > 0:
        dropped = options.get("min_agreement", {}).get("examples_dropped", "?")
        found.append(f"`min_agreement: {cfg.data.min_agreement}` ({dropped} examples dropped)")
    if cfg.data.deployment_positive_rate is not None:
        found.append(f"`deployment_positive_rate: {cfg.data.deployment_positive_rate}`")
    if cfg.data.limit:
        found.append(f"`limit: {cfg.data.limit}` (a seeded sample of the examples)")
    found += [str(note) for note in options.get("notes", [])]
    return found


def _training(cfg, run_dir: Path) -> list[str]:
    t, lora = cfg.train, cfg.model.lora
    steps = _last_record(run_dir).get("step")
    lines = [
        f"- optimizer steps: {steps if steps is not None else t.max_steps or f'{t.epochs} epoch(s)'}; "
        f"batch {t.batch_size} per process × {t.grad_accum} accumulation; seed {t.seed}",
        f"- learning rate {t.learning_rate} ({t.schedule}, warmup {t.warmup_ratio}), weight decay "
        f"{t.weight_decay}, max grad norm {t.max_grad_norm}, precision {t.precision}",
        f"- max length {cfg.data.max_length} tokens"
        + (f" (prompt {cfg.data.max_prompt_length})" if cfg.data.max_prompt_length else ""),
        f"- LoRA r = {lora.r}, α = {lora.alpha}, dropout {lora.dropout}, targets {lora.target_modules}"
        if lora.enabled
        else "- full fine-tuning (no adapter)",
    ]
    last = _last_record(run_dir)
    shown = {k: last[k] for k in ("loss", "kl", "rewards/margin", "rewards/accuracy") if k in last}
    if shown:
        lines.append("- last logged: " + ", ".join(f"{k} {_num(v)}" for k, v in shown.items()))
    lines.append("- the whole config: `config.yaml` in the run folder; every step: `metrics.jsonl`")
    return lines


def _evaluation(result: dict | None) -> list[str]:
    if not result:
        return ["Not evaluated yet (`thumbs eval RUN` adds the numbers here)."]
    low, high = result["win_rate_ci"]
    lines = [
        f"Against the starting model, judge `{result['judge']}`, n = {result['n']} samples per model:",
        "",
        "| metric | value |",
        "|---|---|",
        f"| win rate over the start [95% CI] | {result['win_rate']:.3f} [{low:.3f}, {high:.3f}] |",
        f"| KL to the start (nats/completion) | {_num(result['kl']['mean'])} |",
        f"| length in tokens, policy (start) | {_num(result['length']['policy'])} "
        f"({_num(result['length']['reference'])}) |",
    ]
    if result.get("reward"):  # a pairwise (LLM) judge gives verdicts, not rewards
        reward = result["reward"]
        lines.insert(5, f"| judge reward, policy (start) | {_num(reward['policy']['mean'])} "
                        f"({_num(reward['reference']['mean'])}) |")  # fmt: skip
    if result.get("heldout_auc") is not None:
        lines.append(f"| held-out feedback AUC | {result['heldout_auc']:.3f} |")
    return lines


def _num(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _last_record(run_dir: Path) -> dict:
    path = run_dir / "metrics.jsonl"
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return json.loads(lines[-1]) if lines else {}
