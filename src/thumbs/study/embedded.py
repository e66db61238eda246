"""`thumbs demo --study`: the embedded study on the VADER movie ratings with SmolLM2-135M-Instruct.

KTO and DPO at three β each on the same votes and equal budgets (320 sequences with gradient: 40
KTO steps of 8 votes, 40 DPO steps of 4 pairs), then two conditions trained with KTO at β = 0.1:
``imbalance`` (10% of the thumbs-up kept, the KTO paper's ablation) with the paper's class weights
and without, and ``noise`` (30% of the labels flipped) with every vote kept and with one majority
label per completion. Every cell is judged as the demo judges (VADER), at n = 128 samples per
model: the reference's samples and held-out scores are computed once for all ten cells
(thumbs.eval.memo), so a cell's evaluation costs its policy's samples and scores only. The README
gives the measured time. ``--quick``: two β each, 96 sequences, n = 16.
"""

from __future__ import annotations

from pathlib import Path

import yaml


def embedded_study(*, quick: bool = False, model: str = "default") -> dict:
    """The study as a tree (the schema of thumbs.study.spec)."""
    return {
        "base": {
            "model": {"name_or_path": model, "lora": {"r": 16, "alpha": 32}},
            "data": {"train": "builtin:vader-movies", "max_length": 128, "limit": 160 if quick else 320},
            "kto": {"undesirable_weight": "auto"},
            "dpo": {"pairing": "matched"},
            "train": {"batch_size": 8, "learning_rate": 5e-4, "warmup_ratio": 0.1, "log_every": 2},
        },
        "grid": {"method": ["kto", "dpo"], "beta": [0.1, 0.3] if quick else [0.05, 0.1, 0.3], "seed": [0]},
        # each pair is two sequences: 4 pairs a step are the 8 sequences of a KTO step
        "per_method": {"dpo": {"train.batch_size": 4}},
        "conditions": {
            "clean": {},
            "imbalance": {
                "kind": "imbalance",
                "fraction": 0.1,
                "methods": ["kto"],
                "beta": [0.1],
                "settings": {
                    "weights-auto": {"kto.desirable_weight": "auto", "kto.undesirable_weight": "auto"},
                    "weights-1": {"kto.desirable_weight": 1.0, "kto.undesirable_weight": 1.0},
                },
            },
            "noise": {
                "kind": "noise",
                "fraction": 0.3,
                "methods": ["kto"],
                "beta": [0.1],
                "settings": {
                    "votes": {"data.aggregate": "votes"},
                    "majority": {"data.aggregate": "majority"},
                },
            },
        },  # fmt: skip
        "budget": {"sequences": 96 if quick else 320},
        "eval": {
            "judge": "vader",
            "n": 16 if quick else 128,
            "max_new_tokens": 32 if quick else 48,
            "max_heldout": 100 if quick else 200,
            "batch_size": 64,  # eval's default: about 1.9x the samples/s of 16
        },
    }


def run_embedded_study(out: Path = Path("runs/demo"), *, quick: bool = False, model: str = "default") -> dict:
    """Write the embedded study into ``out/study[-quick]/study.yaml`` and run it there."""
    from thumbs.folders import make_dir, write_text
    from thumbs.study.record import print_summary
    from thumbs.study.run import run_study

    folder = make_dir(Path(out) / ("study-quick" if quick else "study"))
    spec = folder / "study.yaml"
    write_text(spec, yaml.safe_dump(embedded_study(quick=quick, model=model), sort_keys=False))
    result = run_study(spec, folder)
    print_summary(result, folder)
    print(
        f"\nthumbs: study finished in {result['minutes']:.1f} min. Report: {(folder / 'study.html').resolve()}"
    )
    return result
