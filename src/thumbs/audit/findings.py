"""What is in the feedback before training on it: balance, voters, conflicts and noise.

``audit(events)`` reads the ingest events table (``DIR/events.parquet`` or a pyarrow Table) and
returns the dict that ``thumbs audit DIR`` writes as ``audit.json``. Every aggregate is one DuckDB
query over the whole table. A completion is a distinct (prompt, completion) pair. Events whose
``user_id`` is null are anonymous: counted everywhere, left out of the per-user statistics, and
taken as one voter each in the noise estimate. Heavy downvoters and the rate distribution are in
:mod:`thumbs.audit.voters`; the noise estimate is in :mod:`thumbs.audit.noise`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import pyarrow as pa
import typer

from thumbs.audit.noise import estimate_flip_rate
from thumbs.audit.voters import HEAVY_DEFAULTS, user_stats
from thumbs.audit.weighting import check_deployment_rate, deployment_weights, paper_weights
from thumbs.data.store import verify_events, write_output
from thumbs.errors import ThumbsError

REQUIRED = ("prompt", "completion", "label")
EXAMPLES = 5  # conflicting completions shown in audit.json
IMBALANCE = 0.4  # warn when either class is below this share of votes


def audit(
    events: pa.Table | str | Path,
    *,
    deployment_positive_rate: float | None = None,
    heavy_volume_ratio: float = HEAVY_DEFAULTS["volume_ratio"],
    heavy_min_votes: int = HEAVY_DEFAULTS["min_votes"],
    heavy_rate_z: float = HEAVY_DEFAULTS["rate_z"],
    heavy_rate_margin: float = HEAVY_DEFAULTS["rate_margin"],
    heavy_alpha: float = HEAVY_DEFAULTS["alpha"],
) -> dict:
    """The audit of an events table: ``counts``, ``weights``, ``users``, ``conflicts``, ``noise``, ``warnings``.

    ``events`` is a pyarrow Table, an events Parquet file or the ingest folder holding
    ``events.parquet``. The ``heavy_*`` thresholds define heavy downvoters (see
    :func:`thumbs.audit.voters.heavy_downvoters`).
    """
    if deployment_positive_rate is not None:
        check_deployment_rate(deployment_positive_rate)
    con = duckdb.connect()
    _load(con, events)
    counts = _counts(con)
    report = {
        "counts": counts,
        "weights": _weights(counts, deployment_positive_rate),
        "users": user_stats(
            con,
            volume_ratio=heavy_volume_ratio,
            min_votes=heavy_min_votes,
            rate_z=heavy_rate_z,
            rate_margin=heavy_rate_margin,
            alpha=heavy_alpha,
        ),
        "conflicts": _conflicts(con),
        "noise": estimate_flip_rate(con),
    }
    report["warnings"] = _warnings(report)
    return report


def _load(con: duckdb.DuckDBPyConnection, events) -> None:
    """Make the view ``events`` and the table ``votes`` (one row per event, the columns the audit uses)."""
    if isinstance(events, pa.Table):
        con.register("events", events)
        where = "the events table"
    else:
        path = Path(events)
        if path.is_dir():
            path = path / "events.parquet"
        where = str(path)
        if not path.exists():
            raise ThumbsError(
                "events file not found",
                file=where,
                hint="run `thumbs ingest SOURCE --out DIR` first, then audit DIR",
            )
        verify_events(path)  # whole, and the file its manifest describes: never a silent audit
        try:
            con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{_sql_text(str(path))}')")
        except duckdb.Error as err:
            raise ThumbsError(
                f"cannot read it as Parquet ({str(err).splitlines()[0]})",
                file=where,
                hint="give the events.parquet that `thumbs ingest` wrote",
            ) from None
    columns = {row[0]: row[1] for row in con.execute("DESCRIBE events").fetchall()}
    for name in REQUIRED:
        if name not in columns:
            raise ThumbsError(
                f"the events have no '{name}' column (found: {', '.join(columns) or 'none'})",
                file=where,
                field=name,
                hint="audit reads the events table written by `thumbs ingest`: prompt, completion, label, user_id, ...",
            )
    if columns["label"] != "BOOLEAN":
        raise ThumbsError(
            f"label must be true/false, found {columns['label']}",
            file=where,
            field="label",
            hint="true = thumbs up",
        )
    user = "CAST(user_id AS VARCHAR)" if "user_id" in columns else "CAST(NULL AS VARCHAR)"
    split = "CAST(split AS VARCHAR)" if "split" in columns else "CAST(NULL AS VARCHAR)"
    con.execute(
        f"""CREATE TEMP TABLE votes AS
            SELECT hash(prompt, completion) AS item, prompt, completion, label, {user} AS user_id, {split} AS split,
                   coalesce('u:' || {user}, 'a:' || CAST(row_number() OVER () AS VARCHAR)) AS voter
            FROM events"""
    )
    total, unlabelled = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE label IS NULL) FROM votes"
    ).fetchall()[0]
    if total == 0:
        raise ThumbsError(
            "there are no events to audit", file=where, hint="check the ingest manifest and quarantine"
        )
    if unlabelled:
        raise ThumbsError(
            f"{unlabelled} event(s) have no label", file=where, field="label", hint="re-run `thumbs ingest`"
        )


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


def _counts(con: duckdb.DuckDBPyConnection) -> dict:
    row = con.execute(
        """SELECT count(*), count(*) FILTER (WHERE label), count(*) FILTER (WHERE NOT label),
                  count(DISTINCT prompt), count(DISTINCT item), count(DISTINCT user_id),
                  count(*) FILTER (WHERE user_id IS NULL)
           FROM votes"""
    ).fetchall()[0]
    events, desirable, undesirable, prompts, completions, users, anonymous = row
    by_split = con.execute(
        """SELECT split, count(*), count(*) FILTER (WHERE label) FROM votes
           WHERE split IS NOT NULL GROUP BY split ORDER BY split"""
    ).fetchall()
    return {
        "events": events,
        "desirable": desirable,
        "undesirable": undesirable,
        "desirable_fraction": desirable / events,
        "prompts": prompts,
        "completions": completions,
        "users": users,
        "anonymous_events": anonymous,
        "by_split": {name: {"events": n, "desirable": up} for name, n, up in by_split},
    }


def _weights(counts: dict, rate: float | None) -> dict:
    n_desirable, n_undesirable = counts["desirable"], counts["undesirable"]
    if n_desirable == 0 or n_undesirable == 0:
        return {"recommended": None, "deployment": None, "counted_as": "votes (events) of each class"}
    return {
        "recommended": paper_weights(n_desirable, n_undesirable),
        "deployment": None if rate is None else deployment_weights(n_desirable, n_undesirable, rate),
        "counted_as": "votes (events) of each class",
    }


def _conflicts(con: duckdb.DuckDBPyConnection) -> dict:
    """Completions with at least one vote each way (every vote counts, a user's repeat votes too)."""
    con.execute(
        """CREATE TEMP TABLE items AS
           SELECT item, any_value(prompt) AS prompt, any_value(completion) AS completion, count(*) AS votes,
                  count(*) FILTER (WHERE label) AS up, count(*) FILTER (WHERE NOT label) AS down
           FROM votes GROUP BY item"""
    )
    completions, multi, conflicting, votes_in = con.execute(
        """SELECT count(*), count(*) FILTER (WHERE votes >= 2), count(*) FILTER (WHERE up > 0 AND down > 0),
                  coalesce(sum(votes) FILTER (WHERE up > 0 AND down > 0), 0)
           FROM items"""
    ).fetchall()[0]
    examples = con.execute(
        f"""SELECT prompt, completion, up, down FROM items WHERE up > 0 AND down > 0
            ORDER BY votes DESC, abs(up - down), item LIMIT {EXAMPLES}"""
    ).fetchall()
    return {
        "completions_with_both": conflicting,
        "share_of_completions": conflicting / completions,
        "share_of_multi_vote_completions": conflicting / multi if multi else None,
        "multi_vote_completions": multi,
        "votes_on_conflicting": int(votes_in),
        "examples": [
            {"prompt": _clip(p), "completion": _clip(c), "up": up, "down": down}
            for p, c, up, down in examples
        ],
    }


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _warnings(report: dict) -> list[str]:
    counts, weights, users = report["counts"], report["weights"], report["users"]
    noise, conflicts = report["noise"], report["conflicts"]
    out = []
    fraction = counts["desirable_fraction"]
    if weights["recommended"] is None:
        side = "thumbs-up" if fraction == 1 else "thumbs-down"
        out.append(f"Every vote is {side}: no class weight can balance that; KTO will see one class only.")
    elif min(fraction, 1 - fraction) < IMBALANCE:
        rec = weights["recommended"]
        majority = "thumbs-down" if fraction < 0.5 else "thumbs-up"
        out.append(
            f"{max(fraction, 1 - fraction):.0%} of votes are {majority}: train with desirable_weight "
            f"{rec['desirable_weight']:.3g} and undesirable_weight {rec['undesirable_weight']:.3g} "
            "(weights: auto), the paper's rule."
        )
    if counts["anonymous_events"]:
        out.append(
            f"{counts['anonymous_events']} events ({counts['anonymous_events'] / counts['events']:.0%}) have no "
            "user_id: they are counted, but left out of the per-user statistics."
        )
    heavy = users["heavy_downvoters"]
    if heavy["count"]:
        out.append(
            f"{heavy['count']} user(s) cast {heavy['share_of_downvotes']:.0%} of all downvotes, far more often "
            "than the rest: consider user_balance: inverse (or cap) so the model is not tuned to them."
        )
    top = users.get("top_1pct")
    if top and not heavy["count"] and top["share_of_downvotes"] >= 0.25:
        out.append(
            f"The top 1% of users ({top['users']}) cast {top['share_of_downvotes']:.0%} of all downvotes: "
            "consider user_balance: cap."
        )
    share = conflicts["share_of_multi_vote_completions"]
    if share is not None and share >= 0.1:
        out.append(
            f"{share:.0%} of completions with several votes got votes both ways: consider aggregate: majority "
            "or min_agreement."
        )
    if noise["flip_rate"] is None:
        out.append("No completion has votes from two voters, so the label noise cannot be estimated.")
    elif noise["flip_rate"] >= 0.1:
        ci = noise["ci95"]
        interval = f"95% CI {ci[0]:.0%}–{ci[1]:.0%}, " if ci else ""
        out.append(
            f"About {noise['flip_rate']:.0%} of votes look flipped ({interval}from {noise['completions']} "
            "completions with two or more voters); KTO learns that noise: consider aggregate: majority or "
            "min_agreement."
        )
    elif noise["completions"] < 30:
        out.append(
            f"The noise estimate rests on only {noise['completions']} completions with two or more voters."
        )
    return out


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _json_ready(value.item())
    return value


def audit_command(
    directory: Path = typer.Argument(
        ..., help="Ingest output folder holding events.parquet (or the file itself)."
    ),
    json_output: bool = typer.Option(
        False, "--json", help="Print audit.json to stdout instead of the summary."
    ),
    out: Path = typer.Option(None, "--out", help="Where to write audit.json (default: DIR/audit.json)."),
    deployment_positive_rate: float = typer.Option(
        None,
        "--deployment-positive-rate",
        help="Share of good responses in deployment; adds weights mirroring it.",
    ),
    heavy_volume_ratio: float = typer.Option(
        HEAVY_DEFAULTS["volume_ratio"],
        help="Heavy downvoter: at least this many times the median user's votes.",
    ),
    heavy_min_votes: int = typer.Option(
        HEAVY_DEFAULTS["min_votes"], help="Heavy downvoter: at least this many votes."
    ),
    heavy_rate_z: float = typer.Option(
        HEAVY_DEFAULTS["rate_z"],
        help="Heavy downvoter: downvote rate this many robust SDs (1.4826·MAD) above the median user's.",
    ),
    heavy_rate_margin: float = typer.Option(
        HEAVY_DEFAULTS["rate_margin"],
        help="Heavy downvoter: and at least this far above the median user's rate.",
    ),
    heavy_alpha: float = typer.Option(
        HEAVY_DEFAULTS["alpha"], help="Heavy downvoter: binomial test level, Bonferroni over users."
    ),
) -> None:
    """Audit feedback events: class balance and weights, who votes, conflicts, label noise."""
    report = _json_ready(
        audit(
            directory,
            deployment_positive_rate=deployment_positive_rate,
            heavy_volume_ratio=heavy_volume_ratio,
            heavy_min_votes=heavy_min_votes,
            heavy_rate_z=heavy_rate_z,
            heavy_rate_margin=heavy_rate_margin,
            heavy_alpha=heavy_alpha,
        )
    )
    if out is None:
        out = (directory if directory.is_dir() else directory.parent) / "audit.json"
    write_output(out, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if json_output:
        typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_summary(report, out)


def print_summary(report: dict, written_to: Path | None = None) -> None:
    """The audit as a few rich tables and the warnings, for a person at a terminal."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    counts, weights, users = report["counts"], report["weights"], report["users"]
    conflicts, noise = report["conflicts"], report["noise"]
    table = Table(title="Feedback audit", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("events", f"{counts['events']:,} ({counts['anonymous_events']:,} anonymous)")
    table.add_row(
        "thumbs up / down",
        f"{counts['desirable']:,} / {counts['undesirable']:,} ({counts['desirable_fraction']:.1%} up)",
    )
    table.add_row(
        "prompts / completions / users",
        f"{counts['prompts']:,} / {counts['completions']:,} / {counts['users']:,}",
    )
    rec = weights["recommended"]
    if rec:
        chosen = f"desirable {rec['desirable_weight']:.3g}, undesirable {rec['undesirable_weight']:.3g}"
        if rec["desirable_weight"] != 1:
            chosen += " (desirable_weight may be {:.3g}–{:.3g})".format(*rec["desirable_weight_range"])
        elif rec["undesirable_weight"] != 1:
            chosen += " (undesirable_weight may be {:.3g}–{:.3g})".format(*rec["undesirable_weight_range"])
        table.add_row("class weights (paper rule)", chosen)
    if weights["deployment"]:
        dep = weights["deployment"]
        table.add_row(
            f"class weights (deployment {dep['deployment_positive_rate']:.0%} up)",
            f"desirable {dep['desirable_weight']:.3g}, undesirable {dep['undesirable_weight']:.3g}",
        )
    if users["users"]:
        top1, top10 = users["top_1pct"], users["top_10pct"]
        table.add_row(
            "top 1% / 10% of users",
            f"{top1['share_of_votes']:.0%} / {top10['share_of_votes']:.0%} of votes, "
            f"{top1['share_of_downvotes']:.0%} / {top10['share_of_downvotes']:.0%} of downvotes",
        )
        table.add_row("Gini of votes per user", f"{users['gini_votes_per_user']:.2f}")
        rates = users["downvote_rates"]["quantiles"]
        if rates:
            table.add_row(
                "user downvote rate p10 / p50 / p90",
                f"{rates['p10']:.2f} / {rates['p50']:.2f} / {rates['p90']:.2f}",
            )
        heavy = users["heavy_downvoters"]
        names = ", ".join(str(u["user_id"]) for u in heavy["users"][:5]) + (
            ", …" if heavy["count"] > 5 else ""
        )
        table.add_row("heavy downvoters", f"{heavy['count']}" + (f" ({names})" if names else ""))
    table.add_row(
        "completions voted both ways",
        f"{conflicts['completions_with_both']:,} ({conflicts['share_of_completions']:.1%} of all)",
    )
    if noise["flip_rate"] is not None:
        ci = noise["ci95"]
        interval = f", 95% CI {ci[0]:.3f}–{ci[1]:.3f}" if ci else ""
        table.add_row(
            "label-flip rate",
            f"{noise['flip_rate']:.3f}{interval} (from {noise['completions']:,} completions with ≥2 voters)",
        )
    console.print(table)
    for warning in report["warnings"]:
        console.print(f"[yellow]⚠[/yellow] {warning}")
    if written_to is not None:
        console.print(f"written: {written_to}")
