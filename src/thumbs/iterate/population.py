"""Simulated users whose preferences are known: ordinary users who judge by a ground-truth score
with noise and a strict bar, and a small planted group of heavy downvoters who see many answers
and vote most of them down whatever they say. The production scenario and `thumbs iterate
--feedback population` both vote with it, so the audit can be checked against what was planted."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Population:
    ordinary_users: int = 40
    heavy_downvoters: int = 2
    votes_per_answer: int = 5
    heavy_share: float = 0.35  # share of all votes cast by the heavy downvoters
    heavy_down_rate: float = 0.95
    bar: float = 0.25  # ordinary users vote up when score + noise exceeds this
    noise: float = 0.3


def planted(population: Population) -> list[str]:
    """The user ids of the planted heavy downvoters."""
    return [f"heavy-{i}" for i in range(population.heavy_downvoters)]


def simulate_votes(answers: list[dict], scores: list[float], population: Population, seed: int) -> list[dict]:
    """One row per vote: prompt, completion, label, user_id (``heavy-*`` for the planted group)."""
    rng = np.random.default_rng(seed)
    votes = []
    for answer, score in zip(answers, scores):
        for _ in range(population.votes_per_answer):
            if rng.random() < population.heavy_share:
                user = f"heavy-{rng.integers(population.heavy_downvoters)}"
                up = rng.random() > population.heavy_down_rate
            else:
                user = f"user-{rng.integers(population.ordinary_users)}"
                up = score + rng.normal(0, population.noise) > population.bar
            votes.append({**answer, "label": bool(up), "user_id": user})
    return votes
