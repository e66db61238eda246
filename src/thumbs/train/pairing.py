"""Between thumbs data and pairs: DPO pairs from binary feedback, KTO examples from pairs.

A prompt yields pairs only when it has at least one thumbs-up and one thumbs-down completion;
prompts are matched on normalised text or chat messages (``tokenize.prompt_key``). Feedback on
prompts with one class cannot be used by DPO: that count is reported with every DPO run.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pyarrow as pa

from thumbs.tokenize import prompt_key


def pairs_from_feedback(
    table: pa.Table, *, pairing: str = "all", max_pairs_per_prompt: int = 8, seed: int = 0
) -> tuple[pa.Table, dict]:
    """Pairs (prompt, chosen, rejected, weight) from unpaired examples, and counts.

    ``all``: every (up, down) combination of distinct completions, at most ``max_pairs_per_prompt``
    per prompt (a seeded sample). ``matched``: each completion used at most once, so pairs per
    prompt = min(#up, #down). A completion voted both ways is never paired with itself.
    """
    rng = random.Random(seed)
    groups: dict[str, dict] = {}
    rows = table.select(["prompt", "completion", "label", "weight"]).to_pylist()
    for row in rows:
        group = groups.setdefault(
            prompt_key(row["prompt"]), {"prompt": row["prompt"], True: {}, False: {}, "n": 0}
        )
        group["n"] += 1
        bucket = group[row["label"]]
        bucket[row["completion"]] = max(bucket.get(row["completion"], 0.0), row["weight"])

    out = defaultdict(list)
    unusable = 0
    for group in groups.values():
        ups, downs = list(group[True].items()), list(group[False].items())
        if not ups or not downs:
            unusable += group["n"]
            continue
        if pairing == "matched":
            rng.shuffle(ups)
            rng.shuffle(downs)
            candidates = [(u, d) for u, d in zip(ups, downs) if u[0] != d[0]]
        else:
            candidates = [(u, d) for u in ups for d in downs if u[0] != d[0]]
            if len(candidates) > max_pairs_per_prompt:
                candidates = rng.sample(candidates, max_pairs_per_prompt)
        if not candidates:
            unusable += group["n"]
        for (chosen, chosen_weight), (rejected, rejected_weight) in candidates:
            out["prompt"].append(group["prompt"])
            out["chosen"].append(chosen)
            out["rejected"].append(rejected)
            out["weight"].append((chosen_weight + rejected_weight) / 2)
    counts = {
        "feedback_examples": table.num_rows,
        "prompts": len(groups),
        "prompts_with_both_classes": sum(1 for g in groups.values() if g[True] and g[False]),
        "pairs": len(out["prompt"]),
        "unusable_examples": unusable,
    }
    schema = pa.schema(
        [
            ("prompt", pa.string()),
            ("chosen", pa.string()),
            ("rejected", pa.string()),
            ("weight", pa.float64()),
        ]
    )
    return pa.table({name: out[name] for name in schema.names}, schema=schema), counts


def feedback_from_pairs(table: pa.Table) -> pa.Table:
    """Each pair gives one desirable (chosen) and one undesirable (rejected) example.

    Rows come out chosen/rejected interleaved; training shuffles them again with its seed.
    """
    n = table.num_rows
    prompts = table["prompt"].to_pylist()
    weights = table["weight"].to_pylist() if "weight" in table.column_names else [1.0] * n
    chosen, rejected = table["chosen"].to_pylist(), table["rejected"].to_pylist()
    return pa.table(
        {
            "prompt": [p for p in prompts for _ in (0, 1)],
            "completion": [c for pair in zip(chosen, rejected) for c in pair],
            "label": [flag for _ in range(n) for flag in (True, False)],
            "weight": [w for w in weights for _ in (0, 1)],
        }
    )
