"""Data conditions for studies: seeded transforms of a table of thumbs examples, each with a record
of exactly what it did (written to the run's ``data_summary.json``).

They are what the KTO paper's ablations and the audit's warnings are about, made on purpose so that
what a remedy changes can be measured:

- ``imbalance``: keep a share of the thumbs-up examples, all the thumbs-down (the paper drops 90%
  of the desirable examples and corrects with λ_D/λ_U: ``desirable_weight: auto``).
- ``noise``: flip the labels of a known share of the examples (each vote on its own, so
  ``aggregate: majority`` can outvote a flipped vote where a completion has several).
- ``downvoters``: a share of the votes recast by a few planted users who vote down almost always,
  as the production scenario's population does (``user_balance: inverse`` answers it).

Each draws exactly ``round(fraction · count)`` rows with its own seed, so the same config gives the
same examples on every machine.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thumbs.errors import ThumbsError

KINDS = ("imbalance", "noise", "downvoters")


def apply_condition(
    table: pa.Table,
    kind: str,
    fraction: float,
    *,
    seed: int = 0,
    heavy_users: int = 2,
    down_rate: float = 0.95,
) -> tuple[pa.Table, dict]:
    """``table`` under the condition, and what was done (counts before and after)."""
    if kind not in KINDS:
        raise ThumbsError(f"unknown data condition '{kind}'", field="data.condition.kind",
                          hint=f"use one of {', '.join(KINDS)}")  # fmt: skip
    if not 0.0 <= fraction <= 1.0:
        raise ThumbsError(f"a condition's fraction must be in [0, 1], got {fraction}",
                          field="data.condition.fraction")  # fmt: skip
    if "label" not in table.column_names:
        raise ThumbsError(
            "a data condition acts on thumbs examples (prompt, completion, label), not on pairs",
            field="data.condition",
            hint="train on unpaired feedback, or remove data.condition",
        )
    rng = np.random.default_rng(seed)
    labels = table["label"].to_numpy(zero_copy_only=False).astype(bool)
    record: dict = {"kind": kind, "fraction": fraction, "seed": seed, "examples_in": table.num_rows}
    if kind == "imbalance":
        table, record = _imbalance(table, labels, fraction, rng, record)
    elif kind == "noise":
        table, record = _noise(table, labels, fraction, rng, record)
    else:
        table, record = _downvoters(table, labels, fraction, rng, record, heavy_users, down_rate)
    after = table["label"].to_numpy(zero_copy_only=False).astype(bool)
    record.update(examples_out=table.num_rows, desirable_out=int(after.sum()),
                  undesirable_out=int((~after).sum()))  # fmt: skip
    return table, record


def _draw(rng, pool: np.ndarray, fraction: float) -> np.ndarray:
    count = int(round(fraction * len(pool)))
    return np.sort(rng.choice(pool, size=count, replace=False)) if count else pool[:0]


def _imbalance(table, labels, fraction, rng, record):
    ups = np.flatnonzero(labels)
    kept = _draw(rng, ups, fraction)
    keep = np.sort(np.concatenate([np.flatnonzero(~labels), kept]))
    record.update(desirable_in=len(ups), desirable_kept=len(kept), rule="keep this share of thumbs-up")
    return table.take(pa.array(keep, pa.int64())), record


def _noise(table, labels, fraction, rng, record):
    flipped = _draw(rng, np.arange(len(labels)), fraction)
    new = labels.copy()
    new[flipped] = ~new[flipped]
    record.update(flipped=len(flipped), flipped_to_up=int((~labels[flipped]).sum()),
                  rule="flip the label of this share of the examples")  # fmt: skip
    return _replace(table, "label", pa.array(new, pa.bool_())), record


def _downvoters(table, labels, fraction, rng, record, heavy_users, down_rate):
    if heavy_users < 1 or not 0.0 <= down_rate <= 1.0:
        raise ThumbsError("downvoters need heavy_users ≥ 1 and down_rate in [0, 1]", field="data.condition")
    recast = _draw(rng, np.arange(len(labels)), fraction)
    who = rng.integers(heavy_users, size=len(recast))
    up = rng.random(len(recast)) >= down_rate
    new_labels = labels.copy()
    new_labels[recast] = up
    if "user_id" in table.column_names:
        users = pc.cast(table["user_id"], pa.string()).to_pylist()
    else:
        users = [None] * table.num_rows
    for row, user in zip(recast.tolist(), who.tolist()):
        users[row] = f"heavy-{user}"
    table = _replace(table, "label", pa.array(new_labels, pa.bool_()))
    table = _replace(table, "user_id", pa.array(users, pa.string()))
    record.update(
        recast=len(recast), heavy_users=heavy_users, down_rate=down_rate, heavy_down=int((~up).sum()),
        rule="this share of the votes recast by planted heavy downvoters (user_id heavy-K)",
    )  # fmt: skip
    return table, record


def _replace(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, column)
    return table.append_column(name, column)
