"""Verdicts from a study's numbers: two frontiers compared at matched KL, never across it.

A *line* is the cells of one method under one condition and setting, one point per β (seeds
pooled), sorted by KL. Two lines are compared only where they reach the same KL: at each point of
one line whose KL lies inside the other's range, the other's reward is interpolated linearly
between its two neighbours; a point outside that range is matched to the other line's nearest
point when their KLs differ by at most ``kl_match`` of the larger. The differences at all matched
KLs get simultaneous 95% intervals (Bonferroni over the K matched points), so looking at several
KLs does not manufacture a finding. Then:

- some interval excludes 0, all such in one direction → "A's reward exceeds B's by d [lo, hi] at KL x";
- intervals exclude 0 in both directions → the frontiers cross (each leads somewhere);
- every interval covers 0 → "cannot tell apart at n = N; about M samples per model would", M from
  the observed standard error: the n at which the largest observed difference would be found with
  80% power at the same level (standard errors shrink as 1/√n);
- no matched KL at all → no ranking, with the KL range of each line, except where one line has a
  point that *dominates* the other line: a KL below each of its points (95% intervals apart) and a
  reward above each of them (simultaneous 95% intervals over its points). Lower KL and higher
  reward is better at any exchange rate between the two, so that needs no matched KL; a higher
  reward bought with a higher KL is never ranked.

Rewards are the policies' mean judge scores; the standard error of a difference between two cells
adds their squared errors (conservative: the cells share prompts and random streams).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

POWER_Z = NormalDist().inv_cdf(0.8)  # 80% power
MAX_SAMPLES = 1_000_000


@dataclass
class Point:
    kl: float
    kl_se: float
    reward: float
    reward_se: float
    n: int
    beta: float | None = None
    cells: int = 1


def pool(points: list[Point]) -> Point:
    """Cells that differ only in seed, as one point: means averaged; the standard error of the mean,
    and no smaller than the spread between seeds says."""
    k = len(points)
    if k == 1:
        return points[0]

    def se(values, errors):
        within = math.sqrt(sum(e * e for e in errors)) / k
        mean = sum(values) / k
        between = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1) / k)
        return max(within, between)

    kls, rewards = [p.kl for p in points], [p.reward for p in points]
    return Point(
        kl=sum(kls) / k, kl_se=se(kls, [p.kl_se for p in points]), reward=sum(rewards) / k,
        reward_se=se(rewards, [p.reward_se for p in points]), n=sum(p.n for p in points),
        beta=points[0].beta, cells=k,
    )  # fmt: skip


def line(points: list[Point]) -> list[Point]:
    """Points pooled by β and sorted by KL."""
    by_beta: dict = {}
    for p in points:
        by_beta.setdefault(p.beta, []).append(p)
    return sorted((pool(group) for group in by_beta.values()), key=lambda p: p.kl)


def value_at(points: list[Point], kl: float) -> tuple[float, float] | None:
    """Reward and its standard error at ``kl`` by linear interpolation, inside the line's KL range only."""
    if not points or kl < points[0].kl or kl > points[-1].kl:
        return None
    for left, right in zip(points, points[1:]):
        if left.kl <= kl <= right.kl:
            if right.kl == left.kl:
                return left.reward, left.reward_se
            w = (kl - left.kl) / (right.kl - left.kl)
            return (1 - w) * left.reward + w * right.reward, math.hypot(
                (1 - w) * left.reward_se, w * right.reward_se
            )
    return points[0].reward, points[0].reward_se  # a single point, at exactly its KL


def matched(a: list[Point], b: list[Point], kl_match: float) -> list[dict]:
    """(KL, reward of a, of b, and their errors) wherever the two lines reach the same KL."""
    found: dict[tuple, dict] = {}

    def add(kl, ra, sa, rb, sb):
        key = (round(kl, 6),)
        found.setdefault(key, {"kl": kl, "a": ra, "a_se": sa, "b": rb, "b_se": sb})

    for own, other, first in ((a, b, True), (b, a, False)):
        for p in own:
            at = value_at(other, p.kl)
            if at is None:
                near = min(other, key=lambda q: abs(q.kl - p.kl), default=None)
                if near is None or abs(near.kl - p.kl) > kl_match * max(abs(near.kl), abs(p.kl), 1e-12):
                    continue
                at, kl = (near.reward, near.reward_se), (near.kl + p.kl) / 2
            else:
                kl = p.kl
            mine = (p.reward, p.reward_se)
            ra, sa = mine if first else at
            rb, sb = at if first else mine
            add(kl, ra, sa, rb, sb)
    return sorted(found.values(), key=lambda m: m["kl"])


def samples_needed(n: int, diff: float, se: float, z: float) -> int | None:
    """Samples per model at which ``diff`` would be found at level ``z`` with 80% power (None: no difference seen)."""
    if se <= 0 or diff == 0 or not math.isfinite(se):
        return None
    target = abs(diff) / (z + POWER_Z)
    return min(MAX_SAMPLES, math.ceil(n * (se / target) ** 2))


def compare(name_a: str, a: list[Point], name_b: str, b: list[Point], *, kl_match: float = 0.25) -> dict:
    """The verdict between two lines: ``kind`` (exceeds, crosses, cannot tell apart, no ranking),
    the matched points with their intervals, and a sentence."""
    points = matched(a, b, kl_match)
    result = {"a": name_a, "b": name_b, "matched": points, "kl_match": kl_match}
    if not a or not b:
        return result | {"kind": "no ranking", "text": f"{name_a} vs {name_b}: a line has no evaluated cell"}
    if not points:
        dominance = _dominance(name_a, a, name_b, b)
        if dominance is not None:
            return result | dominance
        span = lambda pts: f"{pts[0].kl:.3g}–{pts[-1].kl:.3g}" if len(pts) > 1 else f"{pts[0].kl:.3g}"  # noqa: E731
        return result | {
            "kind": "no ranking",
            "text": f"{name_a} vs {name_b}: no ranking — they never reach the same KL ({name_a} at "
            f"{span(a)} nats, {name_b} at {span(b)}); choose β values whose KLs overlap",
        }
    z = NormalDist().inv_cdf(1 - 0.025 / len(points))
    n = min(p.n for p in a + b)
    for m in points:
        m["diff"] = m["a"] - m["b"]
        m["se"] = math.hypot(m["a_se"] or 0.0, m["b_se"] or 0.0)
        m["ci"] = [m["diff"] - z * m["se"], m["diff"] + z * m["se"]]
    level = "95%" if len(points) == 1 else f"simultaneous 95% over {len(points)} matched KLs"
    where = f"KL {points[0]['kl']:.3g}" + (f"–{points[-1]['kl']:.3g}" if len(points) > 1 else "") + " nats"
    ahead = [m for m in points if m["ci"][0] > 0]
    behind = [m for m in points if m["ci"][1] < 0]
    result |= {"z": z, "level": level, "n": n}
    if ahead and behind:
        best_a, best_b = max(ahead, key=lambda m: m["diff"]), min(behind, key=lambda m: m["diff"])
        return result | {
            "kind": "crosses",
            "text": f"the frontiers cross: {name_a}'s reward exceeds {name_b}'s at KL {best_a['kl']:.3g} "
            f"({_ci(best_a)}) and falls below it at KL {best_b['kl']:.3g} ({_ci(best_b)}); {level}",
        }
    if ahead or behind:
        lead, lag, chosen = (name_a, name_b, ahead) if ahead else (name_b, name_a, behind)
        best = max(chosen, key=lambda m: abs(m["diff"]))
        sign = 1 if ahead else -1
        return result | {
            "kind": "exceeds",
            "winner": lead,
            "text": f"at KL {best['kl']:.3g} nats {lead}'s reward exceeds {lag}'s by {sign * best['diff']:.3g} "
            f"[{sign * best['ci'][0 if ahead else 1]:.3g}, {sign * best['ci'][1 if ahead else 0]:.3g}] "
            f"({level}; separated at {len(chosen)} of {len(points)} matched KLs, {where})",
        }
    best = max(points, key=lambda m: abs(m["diff"]) / m["se"] if m["se"] else 0.0)
    needed = samples_needed(n, best["diff"], best["se"], z)
    more = (
        f"about {needed:,} samples per model would find the largest difference seen ({best['diff']:+.3g} at "
        f"KL {best['kl']:.3g}) with 80% power"
        if needed
        else "no difference was seen at all"
    )
    return result | {
        "kind": "cannot tell apart",
        "samples_needed": needed,
        "text": f"{name_a} vs {name_b}: cannot tell apart at n = {n} ({where}; every interval covers 0, "
        f"{level}; the largest {_ci(best)}); {more}",
    }


def _dominance(name_a: str, a: list[Point], name_b: str, b: list[Point]) -> dict | None:
    """The "dominates" verdict, when a point of one line beats every point of the other at a lower KL."""
    for lead_name, lead, lag_name, lag in ((name_a, a, name_b, b), (name_b, b, name_a, a)):
        z = NormalDist().inv_cdf(1 - 0.025 / len(lag))
        for p in lead:
            if not all(p.kl + 1.96 * p.kl_se < q.kl - 1.96 * q.kl_se for q in lag):
                continue
            gaps = [(p.reward - q.reward, math.hypot(p.reward_se, q.reward_se), q) for q in lag]
            if all(d - z * se > 0 for d, se, _ in gaps):
                d, se, q = min(gaps, key=lambda g: g[0] - z * g[1])
                level = "95%" if len(lag) == 1 else f"simultaneous 95% over its {len(lag)} points"
                return {
                    "kind": "dominates",
                    "winner": lead_name,
                    "z": z,
                    "dominant": {"kl": p.kl, "reward": p.reward, "beta": p.beta},
                    "text": f"{lead_name} dominates {lag_name}: at KL {p.kl:.3g} nats, below every point of "
                    f"{lag_name} (from {min(x.kl for x in lag):.3g}), its reward exceeds each of theirs, the "
                    f"closest by {d:.3g} [{d - z * se:.3g}, {d + z * se:.3g}] ({level}); lower KL and higher "
                    "reward is better at any exchange rate, so no matched KL is needed",
                }
    return None


def _ci(m: dict) -> str:
    return f"{m['diff']:+.3g} [{m['ci'][0]:+.3g}, {m['ci'][1]:+.3g}]"
