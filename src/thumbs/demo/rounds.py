"""`thumbs demo --scenario production --rounds R`: the production scenario run online, round
after round, with `thumbs iterate`: the model answers the scenario's prompts, the simulated users
(planted heavy downvoters among them) vote on its own answers, KTO trains on the round's votes,
and the next round's answers come from the new model.

Two variants on the same rounds, feedback and budgets: KTO on the votes as logged, and with
``user_balance: inverse`` (every user's votes weigh the same in total). The question: does the
conservatism the heavy downvoters teach compound over rounds (answers that score lower under the
ground-truth judge, or shrink), and does ``user_balance`` stop it? Each round's model is judged
against the original by the ground truth (VADER), with intervals.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from thumbs.demo.runs import Size, run_config, stage

# A round costs its answers, the reference log-probs of its training votes, a short KTO run and
# two evaluations; 3 rounds × 2 variants (round 1's answers and votes shared) took 22.3 minutes at
# full size with n = 32 per evaluation on an idle 2-core CPU (2026-12-01), 13.5 at the quick size;
# n = 64 spends part of the 40-minute budget that left on narrower intervals (README: measured).
ROUNDS_FULL = Size(examples=320, kto_steps=24, dpo_steps=0, eval_n=64, heldout=100, max_new_tokens=48)
ROUNDS_QUICK = Size(examples=160, kto_steps=12, dpo_steps=0, eval_n=16, heldout=100, max_new_tokens=32)
SHARED = ("answers.jsonl", "feedback.jsonl", "feedback-source.json")  # round 1: the same votes for both
VARIANTS = {
    "as-logged": {"kto.desirable_weight": 1.0, "kto.undesirable_weight": 1.0},
    "user-balance": {
        "kto.desirable_weight": 1.0,
        "kto.undesirable_weight": 1.0,
        "data.user_balance": "inverse",
    },
}


def run_production_rounds(out: Path, rounds: int, *, quick: bool = False, model: str = "default") -> dict:
    from thumbs.demo.production import TOPICS
    from thumbs.folders import make_dir, write_text
    from thumbs.iterate.rounds import iterate
    from thumbs.iterate.settings import IterateSettings

    size = ROUNDS_QUICK if quick else ROUNDS_FULL
    out = make_dir(Path(out) / ("production-rounds-quick" if quick else "production-rounds"))
    started = time.perf_counter()
    prompts = write_text(
        out / "prompts.txt", "".join(f"Write a one-sentence review of {t}.\n" for t in TOPICS)
    )
    settings = IterateSettings(
        rounds=rounds, prompts=str(prompts), feedback="population", judge="vader",
        samples_per_prompt=4, max_new_tokens=size.max_new_tokens, eval_n=size.eval_n,
        eval_heldout=size.heldout, eval_fraction=0.25, top_p=0.95,
    )  # fmt: skip
    states = {}
    for number, (name, sets) in enumerate(VARIANTS.items(), start=1):
        stage(number, f"{rounds} rounds of KTO on the users' votes: {name}")
        extra = {"train.max_steps": size.kto_steps, **sets}
        cfg = run_config("kto", out / name / "data", out, size, model, extra)
        first = out / next(iter(VARIANTS)) / "round-1"
        if number > 1 and not (out / name / "round-1").exists() and (first / "round.json").exists():
            make_dir(
                out / name / "round-1"
            )  # the same start, answers and votes: the variants differ in training
            for file in SHARED:
                shutil.copyfile(first / file, out / name / "round-1" / file)
        states[name] = iterate(cfg, settings, out / name)
    stage(len(VARIANTS) + 1, "Round by round, against the original model (judge: VADER, the users' taste)")
    print_rounds(states)
    minutes = (time.perf_counter() - started) / 60
    print(f"\nthumbs: production rounds finished in {minutes:.1f} min. Reports: "
          + ", ".join(str(out / name / "iterate.html") for name in states))  # fmt: skip
    return states


def print_rounds(states: dict) -> None:
    from rich.table import Table

    from thumbs import show

    table = Table(title="production scenario, online", title_justify="left")
    for column in ("variant", "round", "votes up", "heavy downvoters", "win rate vs original [95% CI]",
                   "reward (original)", "KL vs original", "length (original)"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("variant", "heavy downvoters") else "right")
    for name, state in states.items():
        for r in state["rounds"]:
            e, low_high = r["against_original"], r["against_original"]["win_rate_ci"]
            table.add_row(
                name, str(r["round"]), f"{r['audit']['desirable_fraction']:.0%}",
                ", ".join(sorted(r["audit"]["heavy_downvoters"])) or "none",
                f"{e['win_rate']:.2f} [{low_high[0]:.2f}, {low_high[1]:.2f}]",
                "–" if e["reward"] is None
                else f"{e['reward']['policy']['mean']:.3f} ({e['reward']['reference']['mean']:.3f})",
                f"{e['kl']['mean']:.3g}", f"{e['length']['policy']:.1f} ({e['length']['reference']:.1f})",
            )  # fmt: skip
    show.console().print(table)
