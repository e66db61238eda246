"""Training options that answer what the audit finds: class weights, user balance, vote aggregation.

Pure functions over a table of examples (``prompt``, ``completion``, ``label``, optional ``weight``
and ``user_id``), as a pyarrow Table or a pandas DataFrame; the result has the same type.

The KTO paper's rule for imbalanced data (DESIGN.md): pick the class weights so that

    λ_D · n_D / (λ_U · n_U)  ∈  [1, 4/3],   one of λ_D, λ_U equal to 1.

The class weights go to the loss (``desirable_weight`` / ``undesirable_weight``); they are
returned, never folded into the per-example ``weight``.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from thumbs.errors import ThumbsError

RATIO_RANGE = (1.0, 4.0 / 3.0)
WEIGHTS = ("none", "auto")
USER_BALANCE = ("none", "cap", "inverse")
AGGREGATE = ("votes", "majority", "mean")


def paper_weights(n_desirable: float, n_undesirable: float) -> dict:
    """The paper's class weights, with the whole interval the rule allows.

    Of the weights that satisfy the rule we take the ones closest to no reweighting: the ratio
    λ_D·n_D/(λ_U·n_U) is moved to the nearest end of [1, 4/3] (left alone when already inside).
    So with fewer desirable examples λ_U = 1 and λ_D = n_U/n_D, the low end of its range
    [n_U/n_D, 4/3·n_U/n_D]; with many more desirable ones λ_D = 1 and λ_U = 3/4·n_D/n_U, the low
    end of [3/4·n_D/n_U, n_D/n_U]. Counts may be summed example weights.
    """
    _check_counts(n_desirable, n_undesirable)
    natural = n_desirable / n_undesirable
    low, high = RATIO_RANGE
    if natural < low:
        desirable, undesirable = low / natural, 1.0
        desirable_range, undesirable_range = [low / natural, high / natural], [1.0, 1.0]
    elif natural > high:
        desirable, undesirable = 1.0, natural / high
        desirable_range, undesirable_range = [1.0, 1.0], [natural / high, natural / low]
    else:
        desirable, undesirable = 1.0, 1.0
        desirable_range, undesirable_range = [1.0, high / natural], [1.0, natural / low]
    return {
        "rule": "desirable_weight·n_desirable / (undesirable_weight·n_undesirable) in [1, 4/3], one weight 1; "
        "the weights nearest to 1 that satisfy it",
        "desirable_weight": desirable,
        "undesirable_weight": undesirable,
        "desirable_weight_range": desirable_range,
        "undesirable_weight_range": undesirable_range,
        "ratio_range": list(RATIO_RANGE),
        "weighted_ratio": desirable * n_desirable / (undesirable * n_undesirable),
    }


def deployment_weights(n_desirable: float, n_undesirable: float, deployment_positive_rate: float) -> dict:
    """Class weights under which the weighted share of desirable examples equals the stated rate π.

    λ_D·n_D / (λ_D·n_D + λ_U·n_U) = π, i.e. λ_D·n_D/(λ_U·n_U) = π/(1−π), with the smaller weight 1.
    """
    _check_counts(n_desirable, n_undesirable)
    rate = check_deployment_rate(deployment_positive_rate)
    target, natural = rate / (1.0 - rate), n_desirable / n_undesirable
    desirable, undesirable = (target / natural, 1.0) if target >= natural else (1.0, natural / target)
    return {
        "rule": "desirable_weight·n_desirable / (desirable_weight·n_desirable + undesirable_weight·n_undesirable) "
        "= deployment_positive_rate, the smaller weight 1",
        "deployment_positive_rate": rate,
        "desirable_weight": desirable,
        "undesirable_weight": undesirable,
    }


def check_deployment_rate(rate: float) -> float:
    if not 0.0 < rate < 1.0:
        raise ThumbsError(
            f"deployment_positive_rate must lie strictly between 0 and 1, got {rate}",
            field="deployment_positive_rate",
            hint="give the share of responses that are good in deployment, e.g. 0.7",
        )
    return rate


def recommended_class_weights(
    n_desirable: float, n_undesirable: float, deployment_positive_rate: float | None = None
) -> tuple[float, float]:
    """(λ_D, λ_U) for ``desirable_weight: auto``: the paper's rule, or mirroring a stated deployment rate."""
    if deployment_positive_rate is None:
        chosen = paper_weights(n_desirable, n_undesirable)
    else:
        chosen = deployment_weights(n_desirable, n_undesirable, deployment_positive_rate)
    return chosen["desirable_weight"], chosen["undesirable_weight"]


def _check_counts(n_desirable: float, n_undesirable: float) -> None:
    if n_desirable <= 0 or n_undesirable <= 0:
        missing = "desirable (thumbs-up)" if n_desirable <= 0 else "undesirable (thumbs-down)"
        raise ThumbsError(
            f"no {missing} examples, so no class weight can balance the classes "
            f"(n_desirable={n_desirable:g}, n_undesirable={n_undesirable:g})",
            field="desirable_weight",
            hint="set desirable_weight and undesirable_weight by hand, or add examples of the missing class",
        )


def apply_feedback_options(
    table,
    *,
    weights: str = "none",
    deployment_positive_rate: float | None = None,
    user_balance: str = "none",
    max_user_share: float = 0.05,
    aggregate: str = "votes",
    min_agreement: float = 0.0,
):
    """Apply the ``data:`` training options to examples; return ``(table, summary)``.

    In order:

    1. ``min_agreement``: drop every completion (a distinct prompt + completion) whose votes agree
       less than this: agreement = share of its votes on the majority side (a single vote: 1).
    2. ``user_balance`` multiplies each example's ``weight``. Anonymous examples (``user_id``
       null or absent) count as one user each. ``inverse``: each user's examples are scaled by
       1/(their summed weight), so every user's total weight is equal (1/count with unit weights).
       ``cap``: users whose share of the total weight exceeds ``max_user_share`` are scaled down
       to exactly that share, the others untouched. Both are then rescaled by one factor so the
       total (and mean) weight equals the input's: the weights are relative, the loss scale stays.
    3. ``aggregate``: ``votes`` keeps every vote. ``majority`` and ``mean`` give one example per
       completion with ``weight`` = agreement, the share of votes on the chosen side, plus
       ``votes`` and ``agreement`` columns (and ``split`` when present). ``majority`` counts each
       vote once; ``mean`` takes the label of the weighted mean vote, so the input weights and
       user balancing decide it and agreement is the weighted share. Ties are dropped and counted.
    4. ``weights``: ``none`` leaves both class weights 1; ``auto`` applies :func:`paper_weights`,
       or :func:`deployment_weights` when ``deployment_positive_rate`` is given, to the summed
       weights of each class in the result. They are returned in the summary as
       ``desirable_weight`` / ``undesirable_weight`` for the loss.
    """
    _check_options(weights, deployment_positive_rate, user_balance, max_user_share, aggregate, min_agreement)
    is_pandas = not isinstance(table, pa.Table)
    examples = _as_arrow(table)
    con = duckdb.connect()
    con.register("raw", examples)
    columns = examples.column_names
    weight = (
        "* REPLACE (coalesce(CAST(weight AS DOUBLE), 1.0) AS weight)"
        if "weight" in columns
        else "*, CAST(1.0 AS DOUBLE) AS weight"
    )
    user = "'u:' || CAST(user_id AS VARCHAR)" if "user_id" in columns else "NULL"
    con.execute(
        f"CREATE TEMP TABLE ex AS SELECT {weight}, coalesce({user}, 'a:' || CAST(__row AS VARCHAR)) AS __voter FROM raw"
    )
    summary: dict = {"examples_in": examples.num_rows, "notes": []}

    summary["min_agreement"] = _filter_agreement(con, min_agreement)
    if con.execute("SELECT count(*) FROM ex").fetchall()[0][0] == 0:
        raise ThumbsError(
            f"min_agreement {min_agreement} dropped every example",
            field="min_agreement",
            hint="lower min_agreement; the audit's conflicts section shows how often voters agree",
        )
    summary["user_balance"] = _balance_users(con, user_balance, max_user_share)
    out_columns = [c for c in columns if c != "__row"] + ([] if "weight" in columns else ["weight"])
    summary["aggregate"] = _aggregate(con, aggregate, "split" in columns)
    if aggregate != "votes":
        out_columns = ["prompt", "completion", "label", "weight", "votes", "agreement"]
        out_columns += ["split"] if "split" in columns else []
        if user_balance != "none" and aggregate == "majority":
            summary["notes"].append(
                "aggregate: majority counts each vote once, so user_balance does not change the result; "
                "use aggregate: mean to let the balanced weights decide"
            )
    result = con.sql(
        f"SELECT {', '.join(_quote(c) for c in out_columns)} FROM ex ORDER BY __row"
    ).to_arrow_table()
    if result.num_rows == 0:
        raise ThumbsError(
            f"aggregate: {aggregate} left no example (every completion was a tie)",
            field="aggregate",
            hint="use aggregate: votes",
        )
    summary["examples_out"] = result.num_rows
    summary.update(_class_weights(con, weights, deployment_positive_rate))
    return (result.to_pandas() if is_pandas else result), summary


def _check_options(weights, rate, user_balance, max_user_share, aggregate, min_agreement) -> None:
    for name, value, allowed in (
        ("weights", weights, WEIGHTS),
        ("user_balance", user_balance, USER_BALANCE),
        ("aggregate", aggregate, AGGREGATE),
    ):
        if value not in allowed:
            raise ThumbsError(
                f"unknown {name} '{value}'", field=name, hint=f"use one of {', '.join(allowed)}"
            )
    if rate is not None and weights != "auto":
        raise ThumbsError(
            "deployment_positive_rate sets class weights, but weights is 'none'",
            field="deployment_positive_rate",
            hint="set weights: auto as well, or remove deployment_positive_rate",
        )
    if not 0.0 < max_user_share <= 1.0:
        raise ThumbsError(
            f"max_user_share must be in (0, 1], got {max_user_share}",
            field="max_user_share",
            hint="e.g. 0.05",
        )
    if not 0.0 <= min_agreement <= 1.0:
        raise ThumbsError(
            f"min_agreement must be in [0, 1], got {min_agreement}", field="min_agreement", hint="e.g. 0.7"
        )


def _as_arrow(table) -> pa.Table:
    if not isinstance(table, pa.Table):
        try:
            table = pa.Table.from_pandas(table, preserve_index=False)
        except (TypeError, AttributeError, pa.ArrowException) as err:
            raise ThumbsError(
                f"examples must be a pyarrow Table or a pandas DataFrame, got {type(table).__name__} ({err})"
            ) from None
    missing = [c for c in ("prompt", "completion", "label") if c not in table.column_names]
    if missing:
        raise ThumbsError(
            f"examples lack the column(s) {', '.join(missing)}",
            field=missing[0],
            hint="examples need prompt, completion and label (bool); weight and user_id are optional",
        )
    if table.num_rows == 0:
        raise ThumbsError("there are no examples", hint="check the training data path and its split")
    label = table.column("label")
    if not pa.types.is_boolean(label.type):
        raise ThumbsError(
            f"label must be true/false, found type {label.type}", field="label", hint="true = thumbs up"
        )
    if label.null_count:
        first = int(np.flatnonzero(label.is_null().to_numpy(zero_copy_only=False))[0])
        raise ThumbsError(
            f"{label.null_count} example(s) have no label",
            row=first,
            field="label",
            hint="drop or label them",
        )
    if "weight" in table.column_names:
        weight = table.column("weight").cast(pa.float64()).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(~(np.isnan(weight) | ((weight >= 0) & np.isfinite(weight))))
        if len(bad):
            raise ThumbsError(
                f"weight must be a finite number ≥ 0, found {weight[bad[0]]}", row=int(bad[0]), field="weight"
            )
    return table.append_column("__row", pa.array(np.arange(table.num_rows, dtype=np.int64)))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _filter_agreement(con: duckdb.DuckDBPyConnection, min_agreement: float) -> dict:
    con.execute(
        """CREATE TEMP TABLE items AS
           SELECT prompt, completion, count(*) AS votes,
                  greatest(count(*) FILTER (WHERE label), count(*) FILTER (WHERE NOT label)) / count(*) AS agreement
           FROM ex GROUP BY prompt, completion"""
    )
    dropped = con.execute(
        "SELECT count(*), coalesce(sum(votes), 0) FROM items WHERE agreement < ?", [min_agreement]
    ).fetchall()[0]
    if dropped[0]:
        con.execute(
            """CREATE OR REPLACE TEMP TABLE ex AS SELECT ex.* FROM ex SEMI JOIN
               (SELECT * FROM items WHERE agreement >= ?) AS kept USING (prompt, completion)""",
            [min_agreement],
        )
    return {
        "threshold": min_agreement,
        "completions_dropped": dropped[0],
        "examples_dropped": int(dropped[1]),
    }


def _balance_users(con: duckdb.DuckDBPyConnection, mode: str, max_share: float) -> dict:
    """Multiply ``ex.weight`` per user (``__voter``) and report the largest user share before and after."""
    users, totals = _user_totals(con)
    named, anonymous = con.sql(
        "SELECT count(DISTINCT __voter) FILTER (WHERE __voter LIKE 'u:%'), count(*) FILTER (WHERE __voter LIKE 'a:%') "
        "FROM ex"
    ).fetchall()[0]
    info = {
        "mode": mode,
        "users": named,
        "anonymous_examples": anonymous,
        "anonymous_rule": "each anonymous example counts as a user of its own",
        "largest_user_share_before": float(totals.max() / totals.sum()),
    }
    if mode == "none":
        return info
    if mode == "inverse":
        factors = 1.0 / np.where(totals > 0, totals, 1.0)
    else:
        factors = _cap_factors(totals, max_share)
        info["max_user_share"] = max_share
        info["users_capped"] = int((factors * totals < totals * (1 - 1e-12)).sum())
        if len(totals) * max_share < 1.0:
            info["note"] = (
                f"only {len(totals)} users: no split keeps every share under {max_share}, so all are equal"
            )
    scaled_total = float((totals * factors).sum())
    factors = factors * (totals.sum() / scaled_total if scaled_total > 0 else 1.0)
    con.register("__factors", pa.table({"__voter": users, "__factor": factors}))
    con.execute(
        """CREATE OR REPLACE TEMP TABLE ex AS SELECT ex.* REPLACE (ex.weight * f.__factor AS weight)
           FROM ex JOIN __factors AS f USING (__voter)"""
    )
    _, after = _user_totals(con)
    info["largest_user_share_after"] = float(after.max() / after.sum())
    info["normalised"] = (
        "rescaled by one factor so the total weight is unchanged (mean weight per example kept)"
    )
    return info


def _user_totals(con: duckdb.DuckDBPyConnection) -> tuple[pa.Array, np.ndarray]:
    rows = con.sql(
        "SELECT __voter, sum(weight) AS total FROM ex GROUP BY __voter ORDER BY __voter"
    ).to_arrow_table()
    return rows.column("__voter"), rows.column("total").to_numpy()


def _cap_factors(totals: np.ndarray, max_share: float) -> np.ndarray:
    """Scale factors that bring every user to at most ``max_share`` of the total, touching as few as possible.

    With the k largest users capped at a common total c and the rest (sum R) unchanged, each capped
    share is c/(R + k·c) = s, so c = s·R/(1 − s·k). Take the smallest k for which the (k+1)-th
    largest user already fits under that c. When fewer than 1/s users exist no split fits, and the
    nearest is every user equal.
    """
    safe = np.where(totals > 0, totals, 1.0)
    if len(totals) * max_share < 1.0:
        return totals.sum() / len(totals) / safe
    order = np.argsort(-totals, kind="stable")
    ordered = totals[order]
    capped = np.arange(len(totals))
    rest = ordered.sum() - np.concatenate([[0.0], np.cumsum(ordered)[:-1]])  # R with the top k capped
    denominator = 1.0 - max_share * capped
    with np.errstate(divide="ignore", invalid="ignore"):
        cap = np.where(denominator > 0, max_share * rest / denominator, np.inf)
    k = int(np.argmax(ordered <= cap * (1.0 + 1e-12)))
    factors = np.ones_like(totals)
    factors[order[:k]] = cap[k] / ordered[:k]
    return factors


def _aggregate(con: duckdb.DuckDBPyConnection, mode: str, has_split: bool) -> dict:
    if mode == "votes":
        return {"mode": "votes"}
    vote = "1.0" if mode == "majority" else "weight"
    split = ", any_value(split) AS split" if has_split else ""
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE grouped AS
            SELECT prompt, completion, count(*) AS votes, min(__row) AS __row{split},
                   sum({vote}) FILTER (WHERE label) AS up, sum({vote}) FILTER (WHERE NOT label) AS down
            FROM ex GROUP BY prompt, completion"""
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE grouped AS
           SELECT * REPLACE (coalesce(up, 0) AS up, coalesce(down, 0) AS down) FROM grouped"""
    )
    tie = "abs(up - down) <= 1e-9 * (up + down)"
    ties = con.execute(f"SELECT count(*) FROM grouped WHERE {tie}").fetchall()[0][0]
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE ex AS
            SELECT * EXCLUDE (up, down), up > down AS label, greatest(up, down) / (up + down) AS agreement,
                   greatest(up, down) / (up + down) AS weight
            FROM grouped WHERE NOT ({tie})"""
    )
    return {
        "mode": mode,
        "completions": con.execute("SELECT count(*) FROM grouped").fetchall()[0][0],
        "ties_dropped": ties,
        "weight": "agreement: the share of votes on the chosen side"
        + (" (each vote once)" if mode == "majority" else " (votes weighted)"),
    }


def _class_weights(con: duckdb.DuckDBPyConnection, mode: str, rate: float | None) -> dict:
    n_desirable, n_undesirable = con.sql(
        "SELECT coalesce(sum(weight) FILTER (WHERE label), 0), coalesce(sum(weight) FILTER (WHERE NOT label), 0) "
        "FROM ex"
    ).fetchall()[0]
    info = {"mode": mode, "n_desirable": float(n_desirable), "n_undesirable": float(n_undesirable)}
    if mode == "none":
        return {"class_weights": info, "desirable_weight": 1.0, "undesirable_weight": 1.0}
    chosen = (
        paper_weights(n_desirable, n_undesirable)
        if rate is None
        else deployment_weights(n_desirable, n_undesirable, rate)
    )
    info.update(chosen)
    info["counted_as"] = "summed example weights of each class after the options above"
    return {
        "class_weights": info,
        "desirable_weight": chosen["desirable_weight"],
        "undesirable_weight": chosen["undesirable_weight"],
    }
