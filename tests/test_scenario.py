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
