"""Losses as small pure functions on sequence log-probabilities.

Each returns per-example losses (the caller reduces them) and the rewards it logs. Shapes: B is the
number of examples in the microbatch; every tensor is float32 [B] unless said otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_reference_point(
    policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor, *, all_reduce=None
) -> torch.Tensor:
    """KTO's reference point z0 = max(0, mean_j [log π(y_j|x_i) − log π_ref(y_j|x_i)]), no gradient.

    The mean runs over mismatched pairs (x_i, y_j), j ≠ i, of this microbatch on every process:
    the sum and the count are all-reduced (``all_reduce`` sums a tensor in place across processes),
    so the estimate does not depend on how the batch is split, and a process with no pairs adds 0.
    """
    with torch.no_grad():
        diff = (policy_kl_logps - ref_kl_logps).float()
        stats = torch.stack([diff.sum(), torch.tensor(float(diff.numel()), device=diff.device)])
        if all_reduce is not None:
            all_reduce(stats)
        z0 = stats[0] / stats[1].clamp(min=1.0)
        return z0.clamp(min=0.0)


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    z0: torch.Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kahneman-Tversky Optimization (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect
    Theoretic Optimization", eq. 7).

    With r = log π(y|x) − log π_ref(y|x) and the reference point z0 (see ``kl_reference_point``):

        desirable:   L = λ_D · (1 − σ(β (r − z0)))
        undesirable: L = λ_U · (1 − σ(β (z0 − r)))

    Intuition: a human judges an outcome relative to a reference point, and losses loom larger than
    gains. The policy gains by raising the implied reward of desirable completions above the KL
    reference point and pushing undesirable ones below it; the sigmoid saturates, so examples
    already far on the right side stop pulling (robustness to noisy labels). λ_D, λ_U trade the
    classes off; the paper keeps λ_D·n_D / (λ_U·n_U) in [1, 4/3].

    Args:
        policy_logps, ref_logps: summed completion log-probs under the policy and reference [B].
        desirable: bool [B], true for thumbs-up.
        z0: scalar reference point, already detached.

    Returns:
        losses [B] (class weight applied) and rewards β·r [B] (detached).
    """
    logratios = policy_logps - ref_logps
    desirable_losses = 1 - torch.sigmoid(beta * (logratios - z0))
    undesirable_losses = 1 - torch.sigmoid(beta * (z0 - logratios))
    losses = torch.where(
        desirable, desirable_weight * desirable_losses, undesirable_weight * undesirable_losses
    )
    return losses, beta * logratios.detach()


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct Preference Optimization, sigmoid loss (Rafailov et al. 2023, eq. 7), optionally
    conservative (label smoothing ε: the preference is assumed flipped with probability ε).

        h = β [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]
        L = −(1 − ε) log σ(h) − ε log σ(−h)

    Intuition: the policy's log-ratio to the reference is an implicit reward; the loss is the
    Bradley-Terry likelihood that the chosen completion beats the rejected one under that reward.

    Returns:
        losses [B], chosen rewards [B] and rejected rewards [B] (β·log-ratio, detached).
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    h = beta * (chosen_logratios - rejected_logratios)
    losses = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def reward_shift(
    rewards: torch.Tensor, totals: torch.Tensor, *, all_reduce=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """BCO's reward shift δ: the mean of every implied reward β·r seen so far, both classes, this
    microbatch's included (as the paper defines it and TRL's former ``BCOTrainer`` kept it), no gradient.

    Args:
        rewards: β·r of this microbatch on this process [B] (B may be 0).
        totals: float64 [2], the (sum, count) of every reward seen before, over all processes.
        all_reduce: sums a tensor in place across processes; the microbatch's (sum, count) goes
            through it, so δ does not depend on how the batch is split.

    Returns:
        δ (float32 scalar) and the new totals (float64 [2]).
    """
    with torch.no_grad():
        batch = torch.stack(
            [rewards.detach().double().sum(), rewards.new_tensor(rewards.numel(), dtype=torch.float64)]
        )
        if all_reduce is not None:
            all_reduce(batch)
        totals = totals.to(batch.device) + batch
        return (totals[0] / totals[1].clamp(min=1.0)).float(), totals


def bco_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    delta: torch.Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary Classifier Optimization (Jung et al. 2024, "Binary Classifier Optimization for Large
    Language Model Alignment"), without the optional underlying-distribution-matching weights.

    With r = log π(y|x) − log π_ref(y|x) and the reward shift δ (see ``reward_shift``):

        desirable:   L = −λ_D · log σ(β r − δ)
        undesirable: L = −λ_U · log σ(−(β r − δ))

    Intuition: train a binary classifier whose logit is the implied reward β·r, thumbs-up as class 1
    and thumbs-down as class 0; the paper shows its cross-entropy bounds the DPO loss, and the shift
    δ (the running mean of all rewards) tightens that bound. Unlike KTO's sigmoid the log-sigmoid
    does not saturate on the wrong side, so misclassified examples keep pulling. λ_D, λ_U are not in
    the paper: they trade the classes off as KTO's do.

    Args:
        policy_logps, ref_logps: summed completion log-probs under the policy and reference [B].
        desirable: bool [B], true for thumbs-up.
        delta: scalar reward shift, already detached.

    Returns:
        losses [B] (class weight applied) and rewards β·r [B] (detached).
    """
    rewards = beta * (policy_logps - ref_logps)
    desirable_losses = -F.logsigmoid(rewards - delta)
    undesirable_losses = -F.logsigmoid(-(rewards - delta))
    losses = torch.where(
        desirable, desirable_weight * desirable_losses, undesirable_weight * undesirable_losses
    )
    return losses, rewards.detach()


def apo_zero_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """APO-zero, unpaired (D'Oosterlinck et al. 2024, "Anchored Preference Optimization and
    Contrastive Revisions", the unpaired form of eq. 7, as TRL's KTO ``apo_zero_unpaired``).

    With r = log π(y|x) − log π_ref(y|x):

        desirable:   L = λ_D · (1 − σ(β r))
        undesirable: L = λ_U · σ(β r)

    Intuition: each completion is anchored to the reference model itself: thumbs-up completions are
    pushed above their reference likelihood and thumbs-down ones below it, independently, with no
    KL reference point (no mismatched pass) — the right choice when the thumbs-up answers are better
    than what the model writes now. The sigmoid saturates as KTO's does.

    Args:
        policy_logps, ref_logps: summed completion log-probs under the policy and reference [B].
        desirable: bool [B], true for thumbs-up.

    Returns:
        losses [B] (class weight applied) and rewards β·r [B] (detached).
    """
    rewards = beta * (policy_logps - ref_logps)
    desirable_losses = 1 - torch.sigmoid(rewards)
    undesirable_losses = torch.sigmoid(rewards)
    losses = torch.where(
        desirable, desirable_weight * desirable_losses, undesirable_weight * undesirable_losses
    )
    return losses, rewards.detach()


def sft_loss(policy_logps: torch.Tensor, completion_tokens: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning: negative log-likelihood of each completion per token [B].

    Per-example means keep long completions from dominating, matching the per-example weighting of
    the preference losses.
    """
    return -policy_logps / completion_tokens.clamp(min=1)
