"""The report's figures, as PNG data URIs (nothing to fetch when the HTML opens).

Each function takes the runs (see thumbs.report.runs.Run) and returns ``data:image/png;base64,...`` or
None when no run has the numbers it draws. Matplotlib runs headless (Agg); PNG metadata is left
out so the file holds no link of any kind.
"""

from __future__ import annotations

import base64
import io
from typing import Any

FONT = 12
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
REFERENCE_COLOR = "#555555"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": FONT,
            "axes.titlesize": FONT + 2,
            "axes.labelsize": FONT,
            "legend.fontsize": FONT - 1,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
        }
    )
    return plt


def color(index: int) -> str:
    return COLORS[index % len(COLORS)]


def to_data_uri(fig) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _series(metrics: list[dict], key: str) -> tuple[list, list]:
    points = [(m["step"], m[key]) for m in metrics if isinstance(m.get(key), (int, float)) and "step" in m]
    return [p[0] for p in points], [p[1] for p in points]


def _smooth(values: list[float], span: int) -> list[float]:
    """Exponential moving average, so a noisy per-step curve shows its trend."""
    alpha, out, level = 2 / (span + 1), [], None
    for value in values:
        level = value if level is None else alpha * value + (1 - alpha) * level
        out.append(level)
    return out


def _curve(ax, steps, values, c, label, style="-"):
    if len(values) > 20:  # raw points faint, trend bold
        ax.plot(steps, values, style, color=c, alpha=0.25, linewidth=1)
        ax.plot(steps, _smooth(values, max(5, len(values) // 20)), style, color=c, linewidth=2, label=label)
    else:
        ax.plot(steps, values, style, color=c, linewidth=2, marker="o", markersize=3, label=label)


def training_curves(runs: list[Any]) -> str | None:
    """Loss, KL estimate, reward margin, and per-class rewards against the optimizer step."""
    if not any(run.metrics for run in runs):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    panels = [
        (axes[0, 0], ["loss"], "Training loss"),
        (axes[0, 1], ["kl"], "KL estimate (batch, z0 for KTO)"),
        (axes[1, 0], ["rewards/margin"], "Reward margin"),
        (
            axes[1, 1],
            ["rewards/desirable", "rewards/chosen"],
            "Reward: desirable/chosen (solid), undesirable/rejected (dashed)",
        ),
    ]
    for ax, keys, title in panels:
        ax.set_title(title, loc="left")
        ax.set_xlabel("optimizer step")
        for i, run in enumerate(runs):
            for key in keys:
                steps, values = _series(run.metrics, key)
                if values:
                    _curve(ax, steps, values, color(i), run.name)
    for i, run in enumerate(runs):  # the other class on the last panel, dashed
        for key in ("rewards/undesirable", "rewards/rejected"):
            steps, values = _series(run.metrics, key)
            if values:
                _curve(axes[1, 1], steps, values, color(i), None, style="--")
    axes[1, 1].axhline(0, color=REFERENCE_COLOR, linewidth=1)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(4, len(labels)), bbox_to_anchor=(0.5, 1.04))
    fig.tight_layout()
    return to_data_uri(fig)


def frontier(runs: list[Any]) -> str | None:
    """Judge reward against KL(π‖π_ref): each run beside its reference (KL 0). Up and left is better."""
    from thumbs.report.runs import shown_kl

    evaluated = [(i, run) for i, run in enumerate(runs) if run.eval and run.eval.get("reward")]
    if not evaluated:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for i, run in evaluated:
        x, x_se, _ = shown_kl(run.eval)
        reward = run.eval["reward"]
        y = reward["policy"]["mean"]
        ref_y = reward["reference"]["mean"]
        ax.plot([0, x], [ref_y, y], color=color(i), linewidth=1, alpha=0.5)
        ax.errorbar(
            x, y, xerr=x_se or 0, yerr=reward["policy"]["stderr"] or 0,
            fmt="o", color=color(i), markersize=9, capsize=4, label=run.name, zorder=3,
        )  # fmt: skip
        ax.errorbar(
            0, ref_y, yerr=reward["reference"]["stderr"] or 0, fmt="o", mfc="white", color=color(i),
            markersize=9, capsize=4, zorder=2,
        )  # fmt: skip
        ax.annotate(run.name, (x, y), textcoords="offset points", xytext=(8, 6), fontsize=FONT)
    ax.plot([], [], "o", mfc="white", color=REFERENCE_COLOR, label="reference (KL 0)")
    ax.set_xlabel("KL(policy ‖ reference), nats per completion")
    ax.set_ylabel(f"judge reward ({evaluated[0][1].eval.get('judge', 'judge')})")
    ax.set_title("Reward against KL: what each run bought, and how far it moved", loc="left")
    ax.legend(loc="best")
    fig.tight_layout()
    return to_data_uri(fig)


def win_rates(runs: list[Any]) -> str | None:
    """Win rate over the reference with its 95% interval, and held-out AUC, one row per run."""
    evaluated = [(i, run) for i, run in enumerate(runs) if run.eval]
    if not evaluated:
        return None
    plt = _pyplot()
    height = 1.2 + 0.55 * len(evaluated)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, height), sharey=True)
    rows = list(range(len(evaluated)))[::-1]
    for row, (i, run) in zip(rows, evaluated):
        rate, (low, high) = run.eval["win_rate"], run.eval["win_rate_ci"]
        left.errorbar(
            rate, row, xerr=[[rate - low], [high - rate]], fmt="o", color=color(i), markersize=9, capsize=5
        )
        left.annotate(f"{rate:.2f}", (rate, row), textcoords="offset points", xytext=(0, 9), ha="center")
        auc = run.eval.get("heldout_auc")
        if auc is not None:
            right.barh(row, auc, color=color(i), height=0.5)
            right.annotate(f"{auc:.3f}", (auc, row), textcoords="offset points", xytext=(4, -4))
        else:
            right.annotate("no held-out labels", (0.02, row), va="center", color=REFERENCE_COLOR)
    left.axvline(0.5, color=REFERENCE_COLOR, linestyle="--", linewidth=1)
    left.set_xlim(0, 1)
    left.set_yticks(rows, [run.name for _, run in evaluated])
    left.set_ylim(-0.7, len(evaluated) - 0.3)
    left.set_title("Win rate over the reference (95% CI)", loc="left")
    right.axvline(0.5, color=REFERENCE_COLOR, linestyle="--", linewidth=1)
    right.set_xlim(0, 1)
    right.set_title("Held-out feedback AUC (0.5 = chance)", loc="left")
    fig.tight_layout()
    return to_data_uri(fig)
