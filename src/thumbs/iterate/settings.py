"""What `thumbs iterate` reads: a training config (any `thumbs train` config) with an optional
``iterate:`` section, and command-line options over that section.

The ``iterate:`` keys, with their defaults, are the fields of :class:`IterateSettings`; the rest of
the file is the training config each round trains with (its ``model.name_or_path`` is the original
model, round 1's start).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Union

from pydantic import Field, ValidationError, field_validator

from thumbs.config import Config, Strict, load_config, read_tree
from thumbs.errors import ThumbsError

FEEDBACK = ("judge", "population", "log")


class IterateSettings(Strict):
    rounds: int = Field(2, gt=0)
    prompts: Union[str, None] = None  # text (one per line), JSONL or Parquet with a prompt field
    feedback: Literal["judge", "population", "log"] = "judge"
    samples_per_prompt: int = Field(4, gt=0)  # answers per prompt per round (HALOs' online KTO: 8)
    max_new_tokens: int = Field(48, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    # judge: scores the answers for --feedback judge, and is the ordinary users' taste for population
    judge: str = "vader"
    # judge → thumbs: up when score > threshold; a number, "median" (the round's), or "quantile:Q"
    threshold: Union[float, str] = "median"
    population: dict = Field(default_factory=dict)  # thumbs.iterate.population.Population fields
    # KTO's reference in each round: the round's starting policy (LoRA adapters merged between
    # rounds), or the original model (one LoRA adapter carried on over the original weights)
    reference: Literal["start", "original"] = "start"
    eval_judge: Union[str, None] = None  # default: judge
    eval_n: int = Field(32, gt=0)
    eval_max_new_tokens: Union[int, None] = Field(None, gt=0)  # default: max_new_tokens
    eval_fraction: float = Field(0.25, ge=0, lt=1)  # prompts held out of training, for evaluation
    eval_heldout: int = Field(1000, gt=0)  # held-out votes scored for the AUC, at most
    batch_size: int = Field(16, gt=0)  # prompts per generate call
    seed: int = 0

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value):
        if isinstance(value, (int, float)):
            return float(value)
        if value == "median":
            return value
        if value.startswith("quantile:"):
            try:
                q = float(value.split(":", 1)[1])
            except ValueError:
                q = -1.0
            if 0 < q < 1:
                return value
        raise ValueError("must be a number, 'median' or 'quantile:Q' with Q in (0, 1)")

    def threshold_value(self, scores: list[float]) -> float:
        """The round's cut: fixed, or the median / a quantile of this round's scores."""
        import numpy as np

        if isinstance(self.threshold, float):
            return self.threshold
        q = 0.5 if self.threshold == "median" else float(self.threshold.split(":", 1)[1])
        return float(np.quantile(np.asarray(scores, dtype=float), q))


def settings_from(tree: dict, options: dict, source: str) -> IterateSettings:
    """The ``iterate:`` section with command-line ``options`` (None = not given) over it."""
    section = dict(tree or {})
    section.update({k: v for k, v in options.items() if v is not None})
    try:
        return IterateSettings.model_validate(section)
    except ValidationError as err:
        lines = []
        for item in err.errors():
            key = ".".join(str(p) for p in item["loc"])
            what = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
            lines.append(f"'iterate.{key}': {what}")
        raise ThumbsError(
            "invalid iterate settings: " + "; ".join(lines),
            file=source,
            hint="see the fields of thumbs/iterate/settings.py, or `thumbs iterate --help`",
        ) from None


def load(path: str | Path, overrides: list[str], options: dict) -> tuple[Config, IterateSettings]:
    """The training config (``--set`` overrides applied) and the iterate settings of ``path``."""
    tree = read_tree(path)
    section = tree.pop("iterate", None) or {}
    if not isinstance(section, dict):
        raise ThumbsError("'iterate' must be a mapping of settings", file=str(path))
    cfg = load_config(path, overrides, tree=tree)
    return cfg, settings_from(section, options, str(path))
