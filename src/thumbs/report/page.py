"""The compare report as one HTML page: inline CSS, plots as data URIs, every piece of text escaped.

Completions are model output and data files are user input, so everything that reaches the page
goes through ``html.escape``; nothing is fetched when the page opens (no scripts, fonts or links).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from thumbs.report.runs import Run, flatten
from thumbs.show import fmt

SAMPLES_SHOWN = 4
DATA_ROWS = 40  # scalar fields shown per data file

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; font-size: 15px;
       color: #1d1d1f; background: #fff; margin: 0; line-height: 1.45; }
main { max-width: 1220px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 28px; margin: 8px 0 4px; }
h2 { font-size: 21px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #e5e5ea; }
h3 { font-size: 17px; margin: 20px 0 8px; }
.meta, .note { color: #57575c; }
.note { font-size: 14px; max-width: 980px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #d8d8dd; padding: 6px 10px; vertical-align: top; text-align: left; }
th { background: #f2f2f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.headline { font-size: 15px; width: 100%; }
table.headline td.run { font-weight: 600; }
td.good { background: #e6f4ea; } td.bad { background: #fdecea; }
table.samples { width: 100%; table-layout: fixed; }
table.samples th:first-child { width: 24%; }
.samples td { white-space: pre-wrap; overflow-wrap: anywhere; }
.score { color: #57575c; font-size: 13px; white-space: nowrap; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0 4px; }
ul.warnings li { margin: 3px 0; }
details { margin: 6px 0; } summary { cursor: pointer; color: #1f4e9c; }
pre { background: #f7f7f9; padding: 10px; font-size: 13px; overflow-x: auto; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
"""

COLUMN_NOTES = (
    "<b>win rate</b>: how often the judge scored the policy's sample above the reference's for the same "
    "prompt and random stream (ties count half), with a 95% Wilson interval; above 0.5 with the whole interval "
    "above it means the judge prefers the policy. <b>reward</b>: the judge's mean score, and its change over the "
    "reference. <b>KL</b>: how far the policy moved from the reference, in nats per completion, from its own "
    "samples, ± its standard error: summed per token (both models' whole next-token distributions along each "
    "sample), or marked <i>per sequence</i> where an older evaluation has only log π/π_ref of the samples. "
    "<b>length</b>: mean completion tokens, reference in brackets; a long drift is a known failure. "
    "<b>held-out AUC</b>: how well the implicit reward β·log(π/π_ref) ranks thumbs-up above thumbs-down on "
    "feedback it did not train on (0.5 = chance)."
)


def esc(value: Any) -> str:
    return html.escape(value if isinstance(value, str) else fmt(value))


def td(value: Any, markup: str | None = None) -> str:
    """A table cell: numbers align right; ``markup`` is HTML already escaped."""
    if markup is not None:
        return f"<td>{markup}</td>"
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="num">{esc(value)}</td>' if numeric else f"<td>{esc(value)}</td>"


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """``rows`` hold cells made by ``td``."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _headline(runs: list[Run], rows: list[dict]) -> str:
    header = [esc(k) for k in rows[0]]
    body = []
    for run, row in zip(runs, rows):
        cells = []
        for key, value in row.items():
            cls = "run" if key == "run" else "num" if key not in ("reading", "method", "model") else ""
            if key == "win rate [95% CI]" and run.eval:
                low, high = run.eval["win_rate_ci"]
                cls += " good" if low > 0.5 else " bad" if high < 0.5 else ""
            cells.append(f'<td class="{cls.strip()}">{esc(value)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    judges = sorted({f"{r.eval['judge']} (n={r.eval['n']})" for r in runs if r.eval})
    judged = f"<p class='note'>Judge: {esc(', '.join(judges))}.</p>" if judges else ""
    return (
        f'<table class="headline"><thead><tr>{"".join(f"<th>{h}</th>" for h in header)}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>{judged}<p class='note'>{COLUMN_NOTES}</p>"
    )


def _figure(uri: str | None, title: str, note: str, missing: str) -> str:
    if uri is None:
        return f"<h2>{title}</h2><p class='note'>{missing}</p>"
    return f"<h2>{title}</h2><p class='note'>{note}</p><img alt='{esc(title)}' src='{uri}'>"


def _scalars(tree: dict) -> list[tuple[str, Any]]:
    """Flattened scalar fields of a data file, examples and long lists left out."""
    out = []
    for key, value in flatten(tree).items():
        if "example" in key or isinstance(value, (list, dict)):
            continue
        out.append((key, value))
    return out[:DATA_ROWS]


def _warnings(tree: dict) -> str:
    items = [w for w in tree.get("warnings") or [] if isinstance(w, str)]
    return "<ul class='warnings'>" + "".join(f"<li>{esc(w)}</li>" for w in items) + "</ul>" if items else ""


def _data(runs: list[Run]) -> str:
    parts = ["<h2>Data</h2>"]
    per_run = [
        (run, next((v for k, v in run.data.items() if Path(k).parent == run.path.resolve()), None))
        for run in runs
    ]
    per_run = [(run, summary) for run, summary in per_run if summary is not None]
    if per_run:
        parts.append("<h3>Training data of each run (data_summary.json)</h3>")
        flat = [dict(_scalars(summary)) for _, summary in per_run]
        keys = list(dict.fromkeys(k for f in flat for k in f))[:DATA_ROWS]
        rows = [[td(k)] + [td(f.get(k)) for f in flat] for k in keys]
        parts.append(_table(["field"] + [run.name for run, _ in per_run], rows))
    shared: dict[str, list[str]] = {}
    for run in runs:
        for file in run.data:
            if Path(file).name != "data_summary.json":
                shared.setdefault(file, []).append(run.name)
    for file, names in shared.items():
        tree = next(run.data[file] for run in runs if file in run.data)
        parts.append(
            f"<h3>{esc(Path(file).name)} <span class='meta'>({esc(file)}; runs: {esc(', '.join(names))})</span></h3>"
        )
        parts.append(_warnings(tree))
        parts.append(_table(["field", "value"], [[td(k), td(v)] for k, v in _scalars(tree)]))
    if len(parts) == 1:
        parts.append(
            "<p class='note'>No data summary found (data_summary.json, audit.json or manifest.json in or beside "
            "the run folders, or beside their data). Run <code>thumbs audit</code> on the ingested data.</p>"
        )
    return "".join(parts)


def _configs(runs: list[Run], diffs: dict[str, list]) -> str:
    parts = ["<h2>Configuration differences</h2>"]
    if len(runs) == 1:
        parts.append("<p class='note'>One run: nothing to compare. Its full config is below.</p>")
    elif not diffs:
        parts.append("<p class='note'>The configs are identical (apart from output_dir).</p>")
    else:
        rows = [
            [td(None, f"<code>{esc(k)}</code>")]
            + [td(json.dumps(v) if isinstance(v, (list, dict)) else v) for v in values]
            for k, values in diffs.items()
        ]
        parts.append(_table(["key"] + [run.name for run in runs], rows))
    for run in runs:
        if run.config:
            import yaml

            text = yaml.safe_dump(run.config, sort_keys=False)
            parts.append(
                f"<details><summary>full config of {esc(run.name)}</summary><pre>{esc(text)}</pre></details>"
            )
    return "".join(parts)


def _samples(runs: list[Run]) -> str:
    parts = ["<h2>Sampled completions</h2>"]
    shown = False
    for run in runs:
        score_name = (run.eval or {}).get("judge", "score")
        samples = (run.eval or {}).get("samples") or []
        if not samples:
            continue
        shown = True
        parts.append(f"<h3>{esc(run.name)}</h3>")
        rows = []
        for sample in samples[:SAMPLES_SHOWN]:
            rows.append([td(str(sample.get("prompt", "")).strip())] + [
                td(None, f"{esc(str(sample.get(who) or '').strip())}<div class='score'>{esc(score_name)} "
                f"{esc(sample.get(who + '_score', sample.get('outcome') if who == 'policy' else ''))}</div>")
                for who in ("policy", "reference")
            ])  # fmt: skip
        parts.append(_table(["prompt", "policy", "reference"], rows, cls="samples"))
    if not shown:
        parts.append("<p class='note'>No run has been evaluated yet (<code>thumbs eval RUN_DIR</code>).</p>")
    return "".join(parts)


def render(runs: list[Run], *, rows: list[dict], figures: dict, diffs: dict, created: str) -> str:
    names = ", ".join(run.name for run in runs)
    body = [
        "<h1>thumbs report</h1>",
        f"<p class='meta'>{len(runs)} run(s): {esc(names)} · written {esc(created)}</p>",
        "<h2>Results</h2>",
        _headline(runs, rows),
        _figure(
            figures.get("win"),
            "Win rate and held-out AUC",
            "Dashed line: no preference (win rate) and chance (AUC). Bars: 95% interval.",
            "No run has eval.json yet: run <code>thumbs eval RUN_DIR</code> first.",
        ),
        _figure(
            figures.get("frontier"),
            "Reward against KL",
            "Filled: the trained policy; hollow: its reference at KL 0. Up and to the left is reward bought cheaply; "
            "far right is a model that moved a lot. Error bars: one standard error.",
            "No run has eval.json yet.",
        ),
        _figure(
            figures.get("curves"),
            "Training curves",
            "Per logged optimizer step; bold lines are a moving average when there are many steps.",
            "No metrics.jsonl found.",
        ),
        _data(runs),
        _configs(runs, diffs),
        _samples(runs),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>thumbs report: {esc(names)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )
