"""iterate.html: the trajectory of a `thumbs iterate` folder on one self-contained page (the
figures embedded as PNG data URIs, every piece of text escaped), and the same table in the terminal."""

from __future__ import annotations

import time
from pathlib import Path

from thumbs.folders import write_text
from thumbs.report.page import CSS, esc
from thumbs.report.plots import REFERENCE_COLOR, color, to_data_uri


def _ci(value: dict) -> str:
    low, high = value["win_rate_ci"]
    return f"{value['win_rate']:.2f} [{low:.2f}, {high:.2f}]"


def rows(state: dict) -> list[list[str]]:
    """One row per round: the votes it got, what the audit found, and its evaluations."""
    table = []
    for r in state["rounds"]:
        audit, start, orig = r["audit"], r["against_start"], r["against_original"]
        reward = orig["reward"]
        table.append(
            [
                str(r["round"]),
                f"{audit['votes']} ({audit['desirable_fraction']:.0%} up)",
                ", ".join(sorted(audit["heavy_downvoters"])) or "none",
                _ci(start),
                _ci(orig),
                "– (pairwise judge)"
                if reward is None
                else f"{reward['policy']['mean']:.3f} ({reward['policy']['mean'] - reward['reference']['mean']:+.3f})",
                f"{orig['kl']['mean']:.3g}",
                f"{start['kl']['mean']:.3g}",
                f"{orig['length']['policy']:.1f} ({orig['length']['reference']:.1f})"
                + _stops(orig["length"]),
            ]
        )
    return table


def _stops(length: dict) -> str:
    """How often the policy (and the original) ended an answer before the sampling cap."""
    stopped = length.get("stopped")
    return f"; {stopped['policy']:.0%} end ({stopped['reference']:.0%})" if stopped else ""


HEADER = [
    "round", "votes", "heavy downvoters (audit)", "win rate vs start [95% CI]", "win rate vs original [95% CI]",
    "reward (Δ vs original)", "KL vs original", "KL vs start", "length (original); ended before the cap",
]  # fmt: skip


def trajectory_figure(state: dict) -> str | None:
    """Win rate against the original and the start, judge reward, and KL, by round."""
    done = state["rounds"]
    if not done:
        return None
    from thumbs.report.plots import _pyplot

    plt = _pyplot()
    fig, (wins, reward, kl) = plt.subplots(1, 3, figsize=(15, 4.4))
    x = [r["round"] for r in done]
    for key, label, c, style in (("against_original", "vs original", color(0), "-"),
                                 ("against_start", "vs round's start", color(1), "--")):  # fmt: skip
        rates = [r[key]["win_rate"] for r in done]
        low = [rate - r[key]["win_rate_ci"][0] for rate, r in zip(rates, done)]
        high = [r[key]["win_rate_ci"][1] - rate for rate, r in zip(rates, done)]
        wins.errorbar(x, rates, yerr=[low, high], fmt="o" + style, color=c, capsize=4, label=label)
        kl.errorbar(x, [r[key]["kl"]["mean"] for r in done], yerr=[r[key]["kl"]["stderr"] or 0 for r in done],
                    fmt="o" + style, color=c, capsize=4, label=label)  # fmt: skip
    wins.axhline(0.5, color=REFERENCE_COLOR, linestyle=":", linewidth=1)
    wins.set_ylim(0, 1)
    wins.set_title("Win rate (95% CI)", loc="left")
    wins.legend(loc="best")
    rx = [0] + x
    if done[0]["against_original"]["reward"] is not None:  # a pairwise judge gives verdicts, no reward
        original = done[0]["against_original"]["reward"]["reference"]
        ry = [original["mean"]] + [r["against_original"]["reward"]["policy"]["mean"] for r in done]
        re = [original["stderr"] or 0] + [
            r["against_original"]["reward"]["policy"]["stderr"] or 0 for r in done
        ]
        reward.errorbar(
            rx, ry, yerr=re, fmt="o-", color=color(0), capsize=4, label="round's model (0: original)"
        )
        reward.legend(loc="best")
    reward.set_title("Judge reward (eval prompts)", loc="left")
    reward.set_xlabel("round")
    kl.set_title("KL(policy ‖ reference), nats", loc="left")
    kl.legend(loc="best")
    for ax in (wins, kl):
        ax.set_xlabel("round")
    for ax in (wins, reward, kl):
        ax.set_xticks(rx if ax is reward else x)
    fig.tight_layout()
    return to_data_uri(fig)


def render(state: dict) -> str:
    settings = state["settings"]
    figure = trajectory_figure(state)
    table = "".join(
        "<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows(state)
    )
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
    planted = next((r["feedback"].get("planted_heavy_downvoters") for r in state["rounds"]
                    if r["feedback"].get("planted_heavy_downvoters")), None)  # fmt: skip
    facts = [
        f"feedback: {settings['feedback']} (judge {settings['judge']}"
        + (f", threshold {settings['threshold']})" if settings["feedback"] == "judge" else ")"),
        f"original model: {state['original']}",
        f"method: {state['config']['method']}; {state['reference_note']}",
        f"{settings['samples_per_prompt']} answers per prompt per round; evaluation: judge "
        f"{settings.get('eval_judge') or settings['judge']}, n = {settings['eval_n']} per model",
        f"status: {state['status']} ({len(state['rounds'])} of {state['rounds_requested']} rounds)",
    ]
    if planted:
        facts.append(f"planted heavy downvoters: {', '.join(planted)}")
    items = "".join(f"<li>{esc(f)}</li>" for f in facts)
    img = f'<img alt="trajectory" src="{figure}">' if figure else "<p class='note'>No finished round yet.</p>"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>thumbs iterate</title><style>{CSS}</style></head><body><main>"
        f"<h1>thumbs iterate</h1><p class='meta'>written {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>"
        f"<ul>{items}</ul><h2>Rounds</h2><table class='headline'><tr>{head}</tr>{table}</table>"
        "<p class='note'>Each round's model is judged against the round's start and against the original "
        "model on the same prompts and random streams; win rates count ties as half.</p>"
        f"<h2>By round</h2>{img}</main></body></html>\n"
    )


def write_page(state: dict, path: Path) -> Path:
    return write_text(path, render(state))


def print_trajectory(state: dict) -> None:
    from rich.table import Table

    from thumbs import show

    table = Table(title=f"thumbs iterate · {state['status']}", title_justify="left")
    for column in HEADER:
        table.add_column(column, justify="left" if column.startswith(("heavy", "round")) else "right")
    for row in rows(state):
        table.add_row(*row)
    show.console().print(table)
