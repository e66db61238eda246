"""Who votes: concentration of votes and downvotes among users, and heavy downvoters.

Reads the audit's ``votes`` table (``user_id``, ``label``). Only named users enter; shares are of
all votes and all downvotes, anonymous ones included, so they read as "these users cast X% of
every downvote".
"""

from __future__ import annotations

import math

import duckdb
import numpy as np

HEAVY_DEFAULTS = {"volume_ratio": 5.0, "min_votes": 20, "rate_z": 3.0, "rate_margin": 0.2, "alpha": 0.01}
RATE_MIN_VOTES = 5  # users with fewer votes have too coarse a rate for the rate distribution
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
HISTOGRAM_BINS = 10


def user_stats(con: duckdb.DuckDBPyConnection, **thresholds: float) -> dict:
    """The ``users`` section of the audit; ``thresholds`` go to :func:`heavy_downvoters`."""
    con.execute(
        """CREATE TEMP TABLE per_user AS
           SELECT user_id, count(*) AS votes, count(*) FILTER (WHERE NOT label) AS downvotes
           FROM votes WHERE user_id IS NOT NULL GROUP BY user_id"""
    )
    users, all_votes, all_down = con.execute(
        "SELECT (SELECT count(*) FROM per_user), count(*), count(*) FILTER (WHERE NOT label) FROM votes"
    ).fetchall()[0]
    info: dict = {"users": users, "shares_of": "all votes and all downvotes, anonymous ones included"}
    if users == 0:
        info["note"] = "no event has a user_id, so there are no per-user statistics"
        info["heavy_downvoters"] = {"count": 0, "users": [], "share_of_downvotes": 0.0}
        return info
    for name, fraction in (("top_1pct", 0.01), ("top_10pct", 0.1)):
        info[name] = _top_share(con, math.ceil(fraction * users), all_votes, all_down)
    info["gini_votes_per_user"] = con.execute(
        """SELECT 2 * sum(rank * votes) / (count(*) * sum(votes)) - (count(*) + 1) / count(*)
           FROM (SELECT votes, row_number() OVER (ORDER BY votes) AS rank FROM per_user)"""
    ).fetchall()[0][0]
    info["votes_per_user"] = dict(
        zip(
            ("median", "mean", "max"),
            con.execute("SELECT median(votes), avg(votes), max(votes) FROM per_user").fetchall()[0],
            strict=True,
        )
    )
    info["downvote_rates"] = _rate_distribution(con)
    info["heavy_downvoters"] = heavy_downvoters(con, **thresholds)
    info["heavy_downvoters"]["share_of_downvotes"] = (
        sum(u["downvotes"] for u in info["heavy_downvoters"]["users"]) / all_down if all_down else 0.0
    )
    return info


def _top_share(con: duckdb.DuckDBPyConnection, top: int, all_votes: int, all_down: int) -> dict:
    """Share of votes cast by the ``top`` users with the most votes, and of downvotes by the top downvoters."""
    votes, down = con.execute(
        f"""SELECT (SELECT sum(votes) FROM (SELECT votes FROM per_user ORDER BY votes DESC LIMIT {top})),
                   (SELECT sum(downvotes) FROM (SELECT downvotes FROM per_user ORDER BY downvotes DESC LIMIT {top}))"""
    ).fetchall()[0]
    return {
        "users": top,
        "share_of_votes": votes / all_votes,
        "share_of_downvotes": down / all_down if all_down else 0.0,
    }


def _rate_distribution(con: duckdb.DuckDBPyConnection) -> dict:
    """Quantiles and a histogram of per-user downvote rates, over users with at least RATE_MIN_VOTES votes."""
    rates = f"SELECT downvotes / votes AS rate FROM per_user WHERE votes >= {RATE_MIN_VOTES}"
    counted, mean, quantiles = con.execute(
        f"SELECT count(*), avg(rate), quantile_cont(rate, {list(QUANTILES)}) FROM ({rates})"
    ).fetchall()[0]
    bins = con.execute(
        f"""SELECT least(CAST(floor(rate * {HISTOGRAM_BINS}) AS INTEGER), {HISTOGRAM_BINS - 1}) AS bin, count(*)
            FROM ({rates}) GROUP BY bin"""
    ).fetchall()
    histogram = [0] * HISTOGRAM_BINS
    for index, count in bins:
        histogram[index] = count
    return {
        "users_counted": counted,
        "min_votes": RATE_MIN_VOTES,
        "mean": mean,
        "quantiles": dict(zip((f"p{round(q * 100)}" for q in QUANTILES), quantiles or [], strict=False)),
        "histogram": {
            "bin_edges": [i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)],
            "users": histogram,
        },
    }


def heavy_downvoters(
    con: duckdb.DuckDBPyConnection,
    *,
    volume_ratio: float = HEAVY_DEFAULTS["volume_ratio"],
    min_votes: int = HEAVY_DEFAULTS["min_votes"],
    rate_z: float = HEAVY_DEFAULTS["rate_z"],
    rate_margin: float = HEAVY_DEFAULTS["rate_margin"],
    alpha: float = HEAVY_DEFAULTS["alpha"],
) -> dict:
    """Users whose volume and downvote rate both stand far above the population.

    A user is a heavy downvoter when all three hold:

    1. volume: votes ≥ max(``min_votes``, ``volume_ratio`` × the median user's votes);
    2. rate: downvote rate ≥ m + max(``rate_margin``, ``rate_z`` × 1.4826 × MAD), where m and MAD
       are the median and the median absolute deviation of the per-user downvote rates (users with
       at least RATE_MIN_VOTES votes); 1.4826 × MAD estimates a standard deviation;
    3. not chance: the one-sided binomial test of their downvotes against the rate m gives
       p ≤ ``alpha`` / (number of users) (Bonferroni over every user).

    Medians resist the few extreme voters the rule looks for, so they cannot raise their own
    yardstick. Measuring "far above" in the population's own spread keeps busy users with an
    ordinary sour taste out; the margin is a floor for populations that barely vary; the test
    keeps a short lucky streak out. The binomial noise of a typical user's rate, m(1−m)/n for the
    median vote count n, is taken out of the spread (in quadrature): production users vote a few
    times each, and their coin-flip noise would otherwise set a bar nobody can pass.
    """
    users, median_votes, pooled = con.execute(
        "SELECT count(*), median(votes), sum(downvotes) / sum(votes) FROM per_user"
    ).fetchall()[0]
    volume = max(float(min_votes), volume_ratio * float(median_votes))
    center, spread, votes_typical = con.execute(
        f"""SELECT median(downvotes / votes), 1.4826 * mad(downvotes / votes), median(votes)
            FROM per_user WHERE votes >= {RATE_MIN_VOTES}"""
    ).fetchall()[0]
    if center is None:  # nobody has enough votes for a rate: the pooled rate, and the margin alone
        center, spread = pooled, 0.0
    else:  # the spread of tastes, not of coin flips: take out a typical user's binomial noise
        noise = center * (1 - center) / float(votes_typical)
        spread = math.sqrt(max(0.0, spread**2 - noise))
    rate = center + max(rate_margin, rate_z * spread)
    candidates = con.execute(
        """SELECT user_id, votes, downvotes FROM per_user
           WHERE votes >= $1 AND downvotes / votes >= $2 ORDER BY downvotes DESC, user_id""",
        [volume, rate],
    ).fetchall()
    flagged = []
    for user_id, votes, down in candidates:
        p_value = binomial_upper_tail(down, votes, center)
        if p_value <= alpha / users:
            flagged.append(
                {
                    "user_id": user_id,
                    "votes": votes,
                    "downvotes": down,
                    "downvote_rate": down / votes,
                    "p_value": p_value,
                }
            )
    return {
        "rule": "votes ≥ max(min_votes, volume_ratio × median votes per user); downvote rate ≥ median user rate "
        "+ max(rate_margin, rate_z × spread), spread = 1.4826 × MAD of user rates less a typical user's "
        "binomial noise; one-sided binomial p ≤ alpha / users "
        "against the median user rate",
        "thresholds": {
            "volume_ratio": volume_ratio,
            "min_votes": min_votes,
            "rate_z": rate_z,
            "rate_margin": rate_margin,
            "alpha": alpha,
        },
        "volume_threshold": volume,
        "median_user_downvote_rate": center,
        "user_rate_spread": spread,
        "rate_threshold": rate,
        "count": len(flagged),
        "users": flagged,
    }


def binomial_upper_tail(successes: int, trials: int, rate: float) -> float:
    """P(X ≥ successes) for X ~ Binomial(trials, rate), summed in log space (exact, no scipy)."""
    if successes <= 0 or rate >= 1.0:
        return 1.0
    if successes > trials or rate <= 0.0:
        return 0.0
    k = np.arange(trials, dtype=np.float64)
    # log pmf(k+1) − log pmf(k) = log((n − k)/(k + 1)) + log(p/(1 − p))
    steps = np.log(trials - k) - np.log(k + 1) + math.log(rate / (1.0 - rate))
    log_pmf = trials * math.log1p(-rate) + np.concatenate([[0.0], np.cumsum(steps)])
    tail = log_pmf[successes:]
    top = tail.max()
    return float(min(1.0, math.exp(top) * np.exp(tail - top).sum()))
