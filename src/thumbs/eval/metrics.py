"""The numbers an evaluation reports, as pure functions of scores: win rate with its interval,
ROC AUC of an implicit reward, a mean with its standard error."""

from __future__ import annotations

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
