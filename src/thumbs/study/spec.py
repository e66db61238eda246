"""A study file, checked whole before anything trains, and the cells it stands for.

A study is a base training config (the schema of ``thumbs train`` configs), a grid (method × β ×
seed), named data conditions (each with the settings to train under it), one budget for every
cell, and the evaluation settings. Every cell is the base config plus a few ``--set`` overrides,
so it is an ordinary run folder that ``thumbs train`` could make from the printed command.

An unknown key anywhere, a value a method does not take (β for ``sft``, a ``kto.*`` setting on a
DPO cell), or a cell whose config would not validate, fails here and names the key.
"""

from __future__ import annotations

import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from thumbs.config import Config, Strict
from thumbs.errors import ThumbsError

METHOD_NAMES = typing.get_args(Config.model_fields["method"].annotation)
# keys the study sets itself in every cell: a setting may not override them
RESERVED = ("method", "output_dir", "train.seed", "train.max_steps", "train.epochs", "data.condition")
Betas = Union[list[float], dict[str, list[float]], None]


class ConditionSpec(Strict):
    """A named data condition: ``none`` (the data as it is), a seeded transform of the training
    examples (``imbalance``, ``noise``, ``downvoters``: ``data.condition`` in each cell's config),
    or ``domain`` (another data set, ``train``). ``settings``: named variants trained under it,
    each a mapping of dotted config keys (as ``--set`` takes them)."""

    kind: Literal["none", "imbalance", "noise", "downvoters", "domain"] = "none"
    fraction: Union[float, None] = Field(None, ge=0, le=1)
    seed: int = 0
    heavy_users: int = Field(2, gt=0)
    down_rate: float = Field(0.95, ge=0, le=1)
    train: Union[str, None] = None  # domain: data.train for its cells, e.g. builtin:vader-tweets
    methods: Union[list[str], None] = None  # default: the grid's
    beta: Betas = None  # default: the grid's
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _fields_of_kind(self):
        transform = self.kind in ("imbalance", "noise", "downvoters")
        if transform and self.fraction is None:
            raise ValueError(f"a '{self.kind}' condition needs a fraction")
        if not transform and self.fraction is not None:
            raise ValueError(f"a '{self.kind}' condition takes no fraction")
        if (self.kind == "domain") != (self.train is not None):
            raise ValueError("a 'domain' condition needs train (a data set); other kinds take none")
        return self


class GridSpec(Strict):
    method: list[str] = Field(min_length=1)
    beta: Betas = None  # a list for every method, or per method; None: the base config's β
    seed: list[int] = Field(default_factory=lambda: [0], min_length=1)


class BudgetSpec(Strict):
    """The same for every cell: ``sequences`` with gradient (completions the loss differentiates;
    a DPO pair is two), or ``epochs`` over each cell's own examples."""

    sequences: Union[int, None] = Field(None, gt=0)
    epochs: Union[float, None] = Field(None, gt=0)

    @model_validator(mode="after")
    def _one(self):
        if (self.sequences is None) == (self.epochs is None):
            raise ValueError("give exactly one of sequences or epochs")
        return self


class EvalSpec(Strict):
    judge: str = "vader"
    n: int = Field(64, gt=0)
    seed: int = 0
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(16, gt=0)
    prompts: Union[str, None] = None  # default: each run's held-out prompts
    max_heldout: int = Field(1000, gt=0)


class StudySpec(Strict):
    base: Union[dict, str] = Field(default_factory=dict)  # a thumbs train config, or the path of one
    grid: GridSpec
    per_method: dict[str, dict[str, Any]] = Field(default_factory=dict)  # settings for one method's cells
    conditions: dict[str, ConditionSpec] = Field(default_factory=lambda: {"clean": ConditionSpec()})
    budget: BudgetSpec
    eval: EvalSpec = Field(default_factory=EvalSpec)
    # cells of two lines whose KLs differ by at most this share are compared as matched
    kl_match: float = Field(0.25, ge=0, lt=1)


@dataclass
class Cell:
    name: str
    condition: str
    variant: str
    method: str
    beta: float | None  # None: the base config's
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, as --set

    def sets(self) -> list[str]:
        """``key=value`` as ``--set`` takes them (YAML values; a plain word stays plain)."""
        return [f"{key}={_yaml_value(value)}" for key, value in self.overrides.items()]


def _yaml_value(value) -> str:
    if (
        isinstance(value, str)
        and re.fullmatch(r"[A-Za-z0-9_./][A-Za-z0-9_.:/-]*", value)
        and yaml.safe_load(value) == value
    ):
        return value
    return json.dumps(value)


def load_study(path: str | Path) -> tuple[StudySpec, dict]:
    """The study at ``path`` and its base config as a tree; every cell checked (see module doc)."""
    path = Path(path)
    if not path.exists():
        raise ThumbsError("study file not found", file=str(path), hint="give the path to a study YAML")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ThumbsError(f"not valid YAML: {err}", file=str(path)) from None
    if not isinstance(tree, dict):
        raise ThumbsError(
            "a study must be a YAML mapping (base, grid, conditions, budget, eval)", file=str(path)
        )
    try:
        spec = StudySpec.model_validate(tree)
    except ValidationError as err:
        raise _describe(err, str(path), "") from None
    base = _base_tree(spec.base, path)
    cells(spec, base, source=str(path))  # every cell's config validates, or this names the key
    return spec, base


def _base_tree(base: dict | str, study: Path) -> dict:
    if isinstance(base, dict):
        tree = base
    else:
        file = Path(base)
        if not file.exists():
            raise ThumbsError("the base config is not found", file=str(file), field="base")
        tree = yaml.safe_load(file.read_text()) or {}
    try:
        Config.model_validate(tree)
    except ValidationError as err:
        raise _describe(err, str(study), "base.") from None
    return json.loads(json.dumps(tree))  # a plain copy


def _describe(err: ValidationError, source: str, prefix: str) -> ThumbsError:
    lines = []
    for item in err.errors():
        key = prefix + ".".join(str(p) for p in item["loc"] if not str(p).startswith("function-after"))
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        else:
            lines.append(f"'{key}': {item['msg']} (got {item.get('input')!r})")
    return ThumbsError("invalid study: " + "; ".join(lines), file=source,
                       hint="fix the key or value; the study schema is in thumbs/study/spec.py")  # fmt: skip


def _error(key: str, message: str, source: str, hint: str) -> ThumbsError:
    return ThumbsError(f"invalid study: '{key}': {message}", file=source, hint=hint)


def _takes_beta(method: str) -> bool:
    section = Config.model_fields.get(method)
    annotation = getattr(section, "annotation", None)
    return (
        isinstance(annotation, type)
        and issubclass(annotation, BaseModel)
        and "beta" in annotation.model_fields
    )


def _betas(betas: Betas, method: str, methods: list[str], key: str, source: str) -> list[float | None]:
    if isinstance(betas, dict):
        for name in betas:
            if name not in methods:
                raise _error(f"{key}.{name}", f"'{name}' is not one of this grid's methods ({', '.join(methods)})",
                             source, "give β per method of the grid")  # fmt: skip
            if not _takes_beta(name):
                raise _error(f"{key}.{name}", f"method '{name}' takes no β", source, f"remove {key}.{name}")
        return list(betas.get(method) or [None])
    if betas is None:
        return [None]
    if not _takes_beta(method):
        raise _error(key, f"method '{method}' takes no β", source,
                     f"give β per method ({key}: {{kto: [...]}}) or drop '{method}' from the grid")  # fmt: skip
    return list(betas)


def _check_settings(settings: dict, method: str, key: str, source: str) -> None:
    sections = {m for m in METHOD_NAMES if m in Config.model_fields}
    for dotted in settings:
        if dotted in RESERVED or dotted.endswith(".beta") and dotted.split(".")[0] in sections:
            raise _error(f"{key}.{dotted}", "the study sets this itself (grid, budget or condition)", source,
                         "use grid.method, grid.beta, grid.seed, budget or conditions instead")  # fmt: skip
        head = dotted.split(".")[0]
        if head in sections and head != method:
            raise _error(f"{key}.{dotted}", f"a {head} setting, which method '{method}' does not take", source,
                         f"give the condition methods: [{head}], or move it to per_method.{head}")  # fmt: skip


def steps_for(budget: BudgetSpec, cfg: Config) -> int | None:
    """Optimizer steps that give ``budget.sequences`` sequences with gradient (None for an epoch budget)."""
    if budget.sequences is None:
        return None
    per_step = cfg.train.batch_size * cfg.train.grad_accum * grad_sequences(cfg.method)
    return max(1, math.ceil(budget.sequences / per_step))


def grad_sequences(method: str) -> int:
    """Sequences the loss differentiates per example: 1 for KTO and SFT, 2 for a DPO pair."""
    from thumbs.train.methods import METHODS

    return len(METHODS[method].grad_roles)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "x"


def cells(spec: StudySpec, base: dict, *, source: str = "study") -> list[Cell]:
    """Every cell of the study, its config validated (without writing anything)."""
    from thumbs.config import _set

    for name in spec.grid.method + list(spec.per_method):
        if name not in METHOD_NAMES:
            raise _error("grid.method" if name in spec.grid.method else f"per_method.{name}",
                         f"unknown method '{name}'", source, f"use {', '.join(METHOD_NAMES)}")  # fmt: skip
    for method, settings in spec.per_method.items():
        _check_settings(settings, method, f"per_method.{method}", source)
    out, seen = [], set()
    for cond_name, cond in spec.conditions.items():
        methods = cond.methods or spec.grid.method
        for method in methods:
            if method not in METHOD_NAMES:
                raise _error(f"conditions.{cond_name}.methods", f"unknown method '{method}'", source,
                             f"use {', '.join(METHOD_NAMES)}")  # fmt: skip
        betas_key = f"conditions.{cond_name}.beta" if cond.beta is not None else "grid.beta"
        for variant, settings in (cond.settings or {"": {}}).items():
            for method in methods:
                _check_settings(settings, method, f"conditions.{cond_name}.settings.{variant}", source)
                for beta in _betas(cond.beta if cond.beta is not None else spec.grid.beta, method, methods,
                                   betas_key, source):  # fmt: skip
                    for seed in spec.grid.seed:
                        cell = _cell(spec, base, cond_name, cond, variant, settings, method, beta, seed)
                        tree = json.loads(json.dumps(base))
                        for key, value in cell.overrides.items():
                            _set(tree, key, value)
                        try:
                            cfg = Config.model_validate(tree)
                        except ValidationError as err:
                            raise _describe(err, source, f"cell {cell.name}: ") from None
                        if spec.budget.sequences is not None:
                            cell.overrides["train.max_steps"] = steps_for(spec.budget, cfg)
                        if cell.name in seen:
                            raise _error("conditions", f"two cells are both named '{cell.name}'", source,
                                         "give conditions and settings distinct names")  # fmt: skip
                        seen.add(cell.name)
                        out.append(cell)
    return out


def _cell(spec, base, cond_name, cond, variant, settings, method, beta, seed) -> Cell:
    overrides: dict[str, Any] = {"method": method, "train.seed": seed}
    if beta is not None:
        overrides[f"{method}.beta"] = beta
    if cond.kind == "domain":
        overrides["data.train"] = cond.train
    elif cond.kind != "none":
        overrides["data.condition"] = {"kind": cond.kind, "fraction": cond.fraction, "seed": cond.seed}
        if cond.kind == "downvoters":
            overrides["data.condition"] |= {"heavy_users": cond.heavy_users, "down_rate": cond.down_rate}
    overrides |= spec.per_method.get(method, {})
    overrides |= settings
    if spec.budget.sequences is None:
        overrides |= {"train.epochs": spec.budget.epochs, "train.max_steps": None}
    shown = beta if beta is not None else (base.get(method) or {}).get("beta")
    parts = [cond_name, variant, method, f"b{shown:g}" if isinstance(shown, (int, float)) else "", f"s{seed}"]
    name = "-".join(_slug(p) for p in parts if p)
    return Cell(name, cond_name, variant, method, beta, seed, overrides)
