"""The numbers an evaluation reports, as pure functions of scores: win rate with its interval,
ROC AUC of an implicit reward, a mean with its standard error, a paired difference with its
Student t interval."""

from __future__ import annotations

import functools
import math

Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion successes/n (successes may be fractional)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, center - half), min(1.0, center + half))


def win_rate(policy_scores, reference_scores) -> dict:
    """Paired win rate of the policy (ties half) with its 95% Wilson interval and the counts."""
    import numpy as np

    policy, reference = np.asarray(policy_scores, float), np.asarray(reference_scores, float)
    wins, ties = int(np.sum(policy > reference)), int(np.sum(policy == reference))
    n = len(policy)
    rate = (wins + 0.5 * ties) / n if n else float("nan")
    low, high = wilson_interval(wins + 0.5 * ties, n)
    return {
        "win_rate": rate,
        "win_rate_ci": [low, high],
        "wins": wins,
        "ties": ties,
        "losses": n - wins - ties,
    }


def roc_auc(scores, labels) -> float | None:
    """Rank-based ROC AUC (Mann-Whitney U / n_pos·n_neg), tied scores sharing their average rank.

    None when one class is absent.
    """
    import numpy as np

    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    _, group, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[group]  # 1-based average rank of each tie group
    u = ranks[labels].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def mean_stderr(values) -> dict:
    import numpy as np

    values = np.asarray(values, float)
    stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return {"mean": float(values.mean()) if len(values) else None, "stderr": stderr}


@functools.lru_cache(maxsize=1024)
def t_quantile(probability: float, df: int) -> float:
    """The Student t quantile for ``df`` ≥ 1 degrees of freedom (no SciPy needed).

    Bisection on the exact CDF for df ≤ 200 (Abramowitz & Stegun 26.7.3-4, finite series for an
    integer df); above that the Cornish-Fisher expansion around the normal quantile (error < 1e-7).
    """
    if not 0 < probability < 1 or df < 1:
        raise ValueError("probability must be in (0, 1) and df at least 1")
    if probability < 0.5:
        return -t_quantile(1 - probability, df)
    if df > 200:
        z = _normal_quantile(probability)
        return (
            z
            + (z**3 + z) / (4 * df)
            + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
        )
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < probability:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_cdf(mid, df) < probability else (low, mid)
    return (low + high) / 2


def _t_cdf(t: float, df: int) -> float:
    """P(T ≤ t) for t ≥ 0: A&S 26.7.3 (odd df) and 26.7.4 (even df) give P(|T| < t)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd: (2/π)(θ + sinθ·cosθ·(1 + 2/3·cos²θ + 2·4/(3·5)·cos⁴θ + ...))
        term, series = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            series += term
        inside = 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
    else:  # even: sinθ·(1 + 1/2·cos²θ + 1·3/(2·4)·cos⁴θ + ...)
        term = series = 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            series += term
        inside = math.sin(theta) * series
    return 0.5 + inside / 2


def _normal_quantile(probability: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(probability)


def paired_difference(a_scores, b_scores, level: float = 0.95) -> dict:
    """Mean of the paired differences a − b, its standard error and the Student t interval.

    The t interval (df = n − 1) is exact for normal differences and close to the stated level
    otherwise once n is a few dozen; a paired difference is what shared random streams make
    precise, since the noise the two samples share cancels in it.
    """
    import numpy as np

    diff = np.asarray(a_scores, float) - np.asarray(b_scores, float)
    n = len(diff)
    if n == 0:
        return {"mean": None, "stderr": None, "ci": [None, None], "n": 0}
    mean = float(diff.mean())
    if n == 1:
        return {"mean": mean, "stderr": None, "ci": [None, None], "n": 1}
    stderr = float(diff.std(ddof=1) / math.sqrt(n))
    half = t_quantile(0.5 + level / 2, n - 1) * stderr
    return {"mean": mean, "stderr": stderr, "ci": [mean - half, mean + half], "n": n}
