"""study.html: the verdicts, the reward–KL frontier and the table of cells, in one self-contained page
(inline CSS, the plot as a PNG data URI, every text escaped; nothing is fetched when it opens)."""

from __future__ import annotations

import html
import json

from thumbs.report.page import CSS, esc
from thumbs.report.plots import FONT, REFERENCE_COLOR, _pyplot, color, to_data_uri
from thumbs.show import fmt


def frontier_figure(result: dict) -> str | None:
    """One panel per condition: reward against KL, a line per method (and setting) through its β
    points, error bars one standard error both ways, the reference hollow at KL 0."""
    lines = [entry for entry in result["lines"] if entry["frontier"]]
    if not lines:
        return None
    plt = _pyplot()
    conditions = list(dict.fromkeys(entry["condition"] for entry in lines))
    columns = min(3, len(conditions))
    rows = -(-len(conditions) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 4.8 * rows), squeeze=False)
    references, axis = {}, "judge reward"
    for cell in result["cells"]:
        axis = (cell["result"] or {}).get("axis", axis)
        if cell["result"]:
            references.setdefault(cell["condition"], cell["result"]["reference_reward"])
    for index, condition in enumerate(conditions):
        ax = axes[index // columns][index % columns]
        for number, entry in enumerate(lines):
            if entry["condition"] != condition:
                continue
            points = entry["frontier"]
            c = color(number)
            ax.errorbar([p["kl"] for p in points], [p["reward"] for p in points],
                        xerr=[p["kl_se"] for p in points], yerr=[p["reward_se"] for p in points],
                        fmt="-o", color=c, capsize=4, markersize=7, label=entry["label"])  # fmt: skip
            for p in points:
                if p["beta"] is not None:
                    ax.annotate(f"β={p['beta']:g}", (p["kl"], p["reward"]), textcoords="offset points",
                                xytext=(6, 5), fontsize=FONT - 2, color=c)  # fmt: skip
        ref = references.get(condition)
        if ref:
            ax.errorbar([0], [ref["mean"]], yerr=[ref["stderr"] or 0], fmt="o", mfc="white",
                        color=REFERENCE_COLOR, capsize=4, markersize=7, label="reference (KL 0)")  # fmt: skip
        ax.set_title(condition, loc="left")
        ax.set_xlabel("KL(policy ‖ reference), nats per completion")
        ax.set_ylabel(axis)
        ax.legend(loc="best", fontsize=FONT - 2)
    for index in range(len(conditions), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    fig.tight_layout()
    return to_data_uri(fig)


def _cell_rows(result: dict) -> str:
    header = ["cell", "condition", "setting", "method", "β", "seed", "status", "steps", "sequences with gradient",
              "epochs", "examples (votes)", "votes DPO cannot use", "KL (token-level) ± se", "reward ± se",
              "Δ vs reference [95% CI]", "win rate [95% CI]", "length (ref)", "held-out AUC"]  # fmt: skip
    body = []
    for cell in result["cells"]:
        r, b = cell["result"], cell["budget"]
        status = cell["status"] + (" (reused)" if "train" in cell["reused"] else "")
        if cell["error"]:
            status += f": {cell['error']['stage']} — {cell['error']['message']}"
        examples = f"{fmt(b.get('examples'))} ({fmt(b.get('votes'))})" if b.get("examples") else "–"
        values = [cell["name"], cell["condition"], cell["variant"] or "–", cell["method"], cell["beta"], cell["seed"],
                  status, b.get("steps"), b.get("sequences_with_gradient"), b.get("epochs"), examples,
                  b.get("unusable_votes") if cell["method"] == "dpo" else "–"]  # fmt: skip
        if r:
            d, w = r["reward_diff"], r["win_rate_ci"] or [None, None]
            values += [
                f"{r['kl']['mean']:.3g} ± {fmt(r['kl']['stderr'])}"
                + ("" if r["kl"]["estimate"] == "kl_tokens" else " (sequence-level)"),
                f"{r['reward']['mean']:.3f} ± {fmt(r['reward']['stderr'])}",
                f"{d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
                + ("" if d.get("paired") else " (unpaired)"),
                f"{fmt(r['win_rate'])} [{fmt(w[0])}, {fmt(w[1])}]",
                f"{fmt(r['length'])} ({fmt(r['reference_length'])})",
                fmt(r["heldout_auc"]),
            ]
        else:
            values += ["–"] * 6
        cls = ' class="bad"' if cell["status"] == "failed" else ""
        body.append(
            f"<tr{cls}>"
            + "".join(f"<td>{esc(v if isinstance(v, str) else fmt(v))}</td>" for v in values)
            + "</tr>"
        )
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _comparisons(result: dict) -> str:
    parts = []
    for comparison in result["comparisons"]:
        rows = "".join(
            f"<tr><td>{m['kl']:.3g}</td><td>{m['a']:.3f} ± {fmt(m['a_se'])}</td><td>{m['b']:.3f} ± {fmt(m['b_se'])}</td>"
            f"<td>{m['diff']:+.3f} [{m['ci'][0]:+.3f}, {m['ci'][1]:+.3f}]</td></tr>"
            for m in comparison["matched"]
            if "diff" in m
        )
        if rows:
            parts.append(
                f"<h3>{esc(comparison['a'])} against {esc(comparison['b'])}</h3><table><thead><tr><th>KL</th>"
                f"<th>{esc(comparison['a'])}</th><th>{esc(comparison['b'])}</th><th>difference "
                f"[{esc(comparison.get('level', '95%'))}]</th></tr></thead><tbody>{rows}</tbody></table>"
            )
    return "".join(parts)


def _head_to_heads(result: dict) -> str:
    items = result.get("head_to_head") or []
    if not items:
        return "<p class='note'>No two methods have cells within the KL tolerance of each other.</p>"
    rows = []
    for h in items:
        if "error" in h:
            rows.append(f"<li>{esc(h['a'])} against {esc(h['b'])}: failed ({esc(h['error'])})</li>")
        else:
            rows.append(f"<li>{esc(h['text'])} <span class='meta'>({esc(h['file'])})</span></li>")
    return (
        "<p class='note'>The best cell of each method at matched KL, sampled again on the same prompts with the "
        f"same random streams, so the difference is paired.</p><ul>{''.join(rows)}</ul>"
    )


def render(result: dict) -> str:
    verdicts = "".join(f"<li>{esc(text)}</li>" for text in result["verdicts"]) or (
        "<li>No two lines have evaluated cells to compare.</li>"
    )
    figure = frontier_figure(result)
    failed = result["failed"]
    body = [
        "<h1>thumbs study</h1>",
        f"<p class='meta'>{esc(result['study'])} · {len(result['cells'])} cells"
        + (f", <b>{len(failed)} failed</b>" if failed else "")
        + f" · written {esc(result['written'])}</p>",
        "<h2>Verdict</h2>",
        f"<ul class='warnings'>{verdicts}</ul>",
        "<p class='note'>Methods and settings are compared only at matched KL: where one line's KL lies inside the "
        "other's range (interpolated linearly between its β points) or within "
        f"{result['kl_match']:.0%} of the other's nearest point. Intervals are simultaneous over the matched KLs of "
        "each comparison; the standard error of a difference adds the two cells' (conservative, the cells share "
        "prompts and random streams). A sample-size estimate is the n per model at which the largest difference "
        "seen would be found with 80% power.</p>",
        f"<p class='note'>Budget: {esc(result['budget']['stated'])}.</p>",
        "<h2>Reward against KL</h2>",
        f"<img alt='frontier' src='{figure}'>"
        if figure
        else "<p class='note'>No cell has been evaluated.</p>",
        "<p class='note'>One line per method (and setting) through its β values, sorted by KL; error bars one "
        "standard error both ways; hollow: the reference at KL 0. Up and to the left is reward bought cheaply.</p>",
        "<h2>Cells</h2>",
        _cell_rows(result),
        "<h2>Head to head at matched KL</h2>",
        _head_to_heads(result),
        "<h2>Matched comparisons</h2>",
        _comparisons(result) or "<p class='note'>None.</p>",
        "<details><summary>study.json</summary><pre>"
        + html.escape(json.dumps({k: v for k, v in result.items() if k != "cells"}, indent=1, default=str))
        + "</pre></details>",
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>thumbs study</title>'
        f"<style>{CSS}</style></head><body><main>{''.join(body)}</main></body></html>\n"
    )
