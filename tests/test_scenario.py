"""The production scenario's simulated users: the audit must see what was planted."""

import numpy as np
import pyarrow as pa

from thumbs.audit.findings import audit
from thumbs.demo.production import Population, simulate_votes


def test_planted_heavy_downvoters_are_found_and_down_votes_dominate():
    rng = np.random.default_rng(1)
    answers = [{"prompt": f"p{i % 24}", "completion": f"answer {i}"} for i in range(96)]
    scores = list(rng.uniform(-0.6, 0.9, size=len(answers)))  # VADER-like compound scores
    votes = simulate_votes(answers, scores, Population(), seed=0)
    table = pa.table({k: [v[k] for v in votes] for k in ("prompt", "completion", "label", "user_id")})
    report = audit(table)
    flagged = {u["user_id"] for u in report["users"]["heavy_downvoters"]["users"]}
    assert flagged == {"heavy-0", "heavy-1"}
    assert report["counts"]["desirable_fraction"] < 0.5
    # ordinary users follow the ground truth: their up-votes go to better answers
    ordinary = [(v["label"], s) for v, s in zip(votes, np.repeat(scores, Population().votes_per_answer))
                if v["user_id"].startswith("user-")]  # fmt: skip
    up = np.mean([s for label, s in ordinary if label])
    down = np.mean([s for label, s in ordinary if not label])
    assert up > down + 0.3


def _versus(mean, low, high, n=48):
    return {"n": n, "win_rate": 0.6, "win_rate_ci": [0.45, 0.73],
            "reward_diff": {"mean": mean, "stderr": (high - low) / 3.92, "ci": [low, high]}}  # fmt: skip


def test_a_remedy_is_ranked_against_the_run_as_logged_only_where_the_numbers_allow():
    """More reward at less KL dominates; at KL that cannot be told apart it is ahead; more reward
    at more KL is a trade, never a win; an interval across 0 cannot tell them apart at this n."""
    from thumbs.demo.production import versus_reading

    low_kl, high_kl = {"mean": 2.1, "stderr": 0.3}, {"mean": 10.3, "stderr": 0.8}
    near = {"mean": 10.0, "stderr": 0.9}
    said = versus_reading("w", "logged", _versus(0.10, 0.02, 0.18), low_kl, high_kl)
    assert said.startswith("w dominates logged: more reward at less KL"), said
    said = versus_reading("w", "logged", _versus(0.10, 0.02, 0.18), near, high_kl)
    assert said.startswith("w ahead of logged at KL that cannot be told apart"), said
    said = versus_reading("w", "logged", _versus(0.10, 0.02, 0.18), high_kl, low_kl)
    assert "a trade, not ranked" in said and "dominates" not in said, said
    said = versus_reading("w", "logged", _versus(-0.10, -0.18, -0.02), high_kl, low_kl)
    assert said.startswith("logged dominates w"), said
    said = versus_reading("w", "logged", _versus(0.03, -0.05, 0.11), low_kl, high_kl)
    assert said.startswith("w and logged cannot be told apart at n=48"), said
    assert "w at lower KL" in said and "samples per model would probably tell" in said
    assert "no paired reward difference" in versus_reading(
        "w", "logged", _versus(0.1, 0.0, 0.2), None, high_kl
    )
