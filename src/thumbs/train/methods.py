"""A training method is the sequences each example needs and a loss over their log-probs; nothing else.

The loop (``thumbs.train.loop``) is shared: it forwards the ``grad_roles`` sequences with gradient in
one pass, the ``nograd_roles`` without, reads precomputed reference log-probs for ``ref_roles``,
and hands everything to ``loss``. Adding a method is adding one ``Method`` here.

A method that carries state from step to step (BCO's reward shift δ) names a ``state`` factory:
the loop makes one object per run and hands it to ``loss``, which updates it (collectives go
through ``all_reduce``, so every process holds the same state); checkpoints save its
``state_dict()`` and resume restores it with ``load_state_dict``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import torch

from thumbs.errors import ThumbsError
from thumbs.tokenize import Encoder, sequence
from thumbs.train.losses import (
    apo_zero_loss,
    bco_loss,
    dpo_loss,
    kl_reference_point,
    kto_loss,
    reward_shift,
    sft_loss,
)


@dataclass
class Items:
    """Tokenized examples: for each role, one (ids, completion_start) per example."""

    seqs: dict[str, list[tuple[list[int], int]]]
    label: torch.Tensor  # bool [N]; all True for paired data
    weight: torch.Tensor  # float [N]
    summary: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.weight)

    def lengths(self) -> list[int]:
        return [sum(len(self.seqs[role][i][0]) for role in self.seqs) for i in range(len(self))]


@dataclass
class Method:
    name: str
    grad_roles: tuple[str, ...]
    nograd_roles: tuple[str, ...]
    ref_roles: tuple[str, ...]
    # loss(policy, tokens, ref, label, cfg, all_reduce, state) -> (losses [B], metric sums)
    loss: Callable
    state: Callable | None = None  # makes the run's method state (state_dict/load_state_dict), if any
    # nograd role -> the grad role whose prompt it shares: its pass continues the grad pass's prompts
    continues: dict[str, str] = field(default_factory=dict)


class RewardShift:
    """BCO's δ as method state: the (sum, count) of every implied reward seen, over all processes."""

    def __init__(self):
        self.totals = torch.zeros(2, dtype=torch.float64)

    def update(self, rewards: torch.Tensor, all_reduce=None) -> torch.Tensor:
        """Add this microbatch's rewards; returns the new δ."""
        delta, self.totals = reward_shift(rewards, self.totals, all_reduce=all_reduce)
        return delta

    def state_dict(self) -> dict:
        return {"reward_sum": float(self.totals[0]), "reward_count": float(self.totals[1])}

    def load_state_dict(self, state: dict) -> None:
        self.totals = torch.tensor([state["reward_sum"], state["reward_count"]], dtype=torch.float64)


def kl_partners(prompts: list[str], completions: list[str], seed: int) -> list[int]:
    """For each example i, a different example j whose completion is paired with i's prompt for z0.

    Distinct completions are put on one random cycle and each example takes a completion from the
    next group on it, so j ≠ i always, and y_j differs from y_i whenever the data has two distinct
    completions. With one example there is no mismatched pair at all: an error.
    """
    n = len(completions)
    if n < 2:
        raise ThumbsError(
            "KTO needs at least 2 examples: z0 pairs each prompt with another example's completion"
        )
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(completions):
        groups.setdefault(text, []).append(i)
    members = list(groups.values())
    if len(members) == 1:  # every completion is the same text: pair by index only
        order = list(range(n))
        rng.shuffle(order)
        partner = [0] * n
        for k, i in enumerate(order):
            partner[i] = order[(k + 1) % n]
        return partner
    rng.shuffle(members)
    partner = [0] * n
    for k, group in enumerate(members):
        following = members[(k + 1) % len(members)]
        for i in group:
            partner[i] = rng.choice(following)
    return partner


def _kto_loss(policy, tokens, ref, label, cfg, all_reduce, state):
    z0 = kl_reference_point(policy["kl"], ref["kl"], all_reduce=all_reduce)
    losses, rewards = kto_loss(
        policy["target"],
        ref["target"],
        label,
        z0,
        beta=cfg.kto.beta,
        desirable_weight=cfg.kto.desirable_weight,
        undesirable_weight=cfg.kto.undesirable_weight,
    )
    return losses, {"kl": z0, **_class_metrics(policy["target"], rewards, label)}


def _class_metrics(policy_logps, rewards, label) -> dict:
    """Sums of rewards and log-probs per class, as every thumbs method logs them."""
    return {
        "rewards/desirable_sum": rewards[label].sum(),
        "rewards/desirable_count": label.sum().float(),
        "rewards/undesirable_sum": rewards[~label].sum(),
        "rewards/undesirable_count": (~label).sum().float(),
        "logps/desirable_sum": policy_logps.detach()[label].sum(),
        "logps/undesirable_sum": policy_logps.detach()[~label].sum(),
    }


def _bco_loss(policy, tokens, ref, label, cfg, all_reduce, state):
    beta = cfg.bco.beta
    delta = state.update(beta * (policy["target"] - ref["target"]).detach(), all_reduce)
    losses, rewards = bco_loss(
        policy["target"],
        ref["target"],
        label,
        delta,
        beta=beta,
        desirable_weight=cfg.bco.desirable_weight,
        undesirable_weight=cfg.bco.undesirable_weight,
    )
    shift = {"reward_shift_sum": delta, "reward_shift_count": torch.ones((), device=delta.device)}
    return losses, {**_class_metrics(policy["target"], rewards, label), **shift}


def _apo_zero_loss(policy, tokens, ref, label, cfg, all_reduce, state):
    losses, rewards = apo_zero_loss(
        policy["target"],
        ref["target"],
        label,
        beta=cfg.apo_zero.beta,
        desirable_weight=cfg.apo_zero.desirable_weight,
        undesirable_weight=cfg.apo_zero.undesirable_weight,
    )
    return losses, _class_metrics(policy["target"], rewards, label)


def _dpo_loss(policy, tokens, ref, label, cfg, all_reduce, state):
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy["chosen"],
        policy["rejected"],
        ref["chosen"],
        ref["rejected"],
        beta=cfg.dpo.beta,
        label_smoothing=cfg.dpo.label_smoothing,
    )
    metrics = {
        "rewards/chosen_sum": chosen_rewards.sum(),
        "rewards/rejected_sum": rejected_rewards.sum(),
        "rewards/accuracy_sum": (chosen_rewards > rejected_rewards).float().sum(),
        "pairs_count": torch.tensor(float(len(losses)), device=losses.device),
    }
    return losses, metrics


def _sft_loss(policy, tokens, ref, label, cfg, all_reduce, state):
    losses = sft_loss(policy["target"], tokens["target"])
    return losses, {"nll_sum": losses.detach().sum(), "nll_count": torch.tensor(float(len(losses)))}


METHODS = {
    "kto": Method(
        "kto",
        grad_roles=("target",),
        nograd_roles=("kl",),
        ref_roles=("target", "kl"),
        loss=_kto_loss,
        continues={"kl": "target"},
    ),
    "dpo": Method(
        "dpo",
        grad_roles=("chosen", "rejected"),
        nograd_roles=(),
        ref_roles=("chosen", "rejected"),
        loss=_dpo_loss,
    ),
    "sft": Method("sft", grad_roles=("target",), nograd_roles=(), ref_roles=(), loss=_sft_loss),
    "bco": Method(
        "bco",
        grad_roles=("target",),
        nograd_roles=(),
        ref_roles=("target",),
        loss=_bco_loss,
        state=RewardShift,
    ),
    "apo_zero": Method(
        "apo_zero", grad_roles=("target",), nograd_roles=(), ref_roles=("target",), loss=_apo_zero_loss
    ),
}


def build_items(method: str, table: pa.Table, encoder: Encoder, seed: int) -> Items:
    """Tokenize once: every sequence the method needs, for every example."""
    prompts = table["prompt"].to_pylist()
    weight = torch.tensor(table["weight"].to_pylist(), dtype=torch.float32)
    if method == "dpo":
        chosen = encoder.completion_ids(table["chosen"].to_pylist())
        rejected = encoder.completion_ids(table["rejected"].to_pylist())
        seqs = {"chosen": [], "rejected": []}
        for prompt, c, r in zip(prompts, chosen, rejected):
            ids = encoder.prompt_ids(prompt)
            seqs["chosen"].append(sequence(*encoder.fit(ids, c)))
            seqs["rejected"].append(sequence(*encoder.fit(ids, r)))
        summary = {"truncated_sequences": encoder.truncated}
        return Items(seqs, torch.ones(len(prompts), dtype=torch.bool), weight, summary)

    texts = table["completion"].to_pylist()
    label = torch.tensor(table["label"].to_pylist(), dtype=torch.bool)
    completions = encoder.completion_ids(texts)
    prompt_ids = [encoder.prompt_ids(p) for p in prompts]
    seqs = {"target": [sequence(*encoder.fit(p, c)) for p, c in zip(prompt_ids, completions)]}
    summary = {"truncated_examples": encoder.truncated}
    if method == "kto":
        partner = kl_partners(prompts, texts, seed)
        seqs["kl"] = [sequence(*encoder.fit(prompt_ids[i], completions[j])) for i, j in enumerate(partner)]
    return Items(seqs, label, weight, summary)
