"""Label-flip rate of thumbs feedback, estimated from voters who disagree on the same completion.

Model: each completion has one true label, and every vote reports it flipped with the same
probability ε, independently across voters and of the label (symmetric flips). Two votes on one
completion then disagree with probability

    D = 2ε(1 − ε),   so   ε = (1 − √(1 − 2D)) / 2   (for D ≤ 1/2; D ≥ 1/2 means ε = 1/2, coin flips).

Per completion with n ≥ 2 voters the share of its n(n−1)/2 voter pairs that disagree is an
unbiased estimate D_i of D; D̂ is the plain mean of D_i over those completions (each completion
counts once, so a few completions with hundreds of votes do not dominate). The 95% interval is the
normal interval for that mean (D̂ ± 1.96·sd(D_i)/√m over the m completions, the analytic
counterpart of a bootstrap over completions), mapped through the monotone inversion above.

Voters: a named user is one voter per completion; if they voted on it more than once their vote is
the share of their votes that are up (y ∈ [0, 1]), and a pair (a, b) disagrees with probability
y_a(1 − y_b) + y_b(1 − y_a). Each anonymous vote is a voter of its own.

What it assumes, and what breaks it: items whose true label is itself ambiguous (a text half the
people like) have disagreement 2p(1−p) from honest taste, not flips; the estimator cannot tell the
two apart and reports ε with D̂ = mean 2p_i(1−p_i). That is the noise KTO will see, but read it as
"how often two people disagree", not as annotation errors alone. Since 2q(1−q) is concave, under
such a mixture ε is at most the mean minority share q_i: ambiguity makes it read lower than the
average minority share, never higher. Asymmetric flips (up→down more often than down→up) and votes
that copy each other (herding) also bias it.
"""

from __future__ import annotations

import math

import duckdb

Z95 = 1.959963984540054


def flip_rate_from_disagreement(disagreement: float) -> float:
    """ε with 2ε(1 − ε) = D, the root in [0, 1/2]; D above 1/2 gives 1/2."""
    clipped = min(max(disagreement, 0.0), 0.5)
    return (1.0 - math.sqrt(1.0 - 2.0 * clipped)) / 2.0


def estimate_flip_rate(con: duckdb.DuckDBPyConnection) -> dict:
    """The noise section of the audit, from the ``votes`` table (columns ``item``, ``voter``, ``label``)."""
    con.execute(
        """CREATE TEMP TABLE voter_items AS
           SELECT item, voter, avg(CAST(label AS DOUBLE)) AS y FROM votes GROUP BY item, voter"""
    )
    completions, mean_d, var_d, voters, pairs = con.execute(
        """SELECT count(*), avg(d), var_samp(d), coalesce(sum(n), 0), coalesce(sum(n * (n - 1) / 2), 0)
           FROM (SELECT count(*) AS n,
                        ((count(*) - 1) * sum(y) - sum(y) * sum(y) + sum(y * y)) / (count(*) * (count(*) - 1) / 2)
                            AS d
                 FROM voter_items GROUP BY item HAVING count(*) >= 2)"""
    ).fetchall()[0]
    info = {
        "method": "pairwise disagreement among voters on the same completion, inverted under a symmetric "
        "flip model: D = 2ε(1−ε); see thumbs.audit.noise",
        "assumes": "one true label per completion, flips independent and symmetric; honest disagreement on "
        "ambiguous completions counts as noise",
        "completions": completions,
        "voters": int(voters),
        "voter_pairs": int(pairs),
        "pairwise_disagreement": mean_d,
        "flip_rate": None,
        "ci95": None,
    }
    if completions == 0:
        return info
    info["flip_rate"] = flip_rate_from_disagreement(mean_d)
    if completions >= 2:
        half = Z95 * math.sqrt(var_d / completions)
        info["ci95"] = [
            flip_rate_from_disagreement(mean_d - half),
            flip_rate_from_disagreement(mean_d + half),
        ]
    return info
