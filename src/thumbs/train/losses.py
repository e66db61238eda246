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


def sft_loss(policy_logps: torch.Tensor, completion_tokens: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning: negative log-likelihood of each completion per token [B].

    Per-example means keep long completions from dominating, matching the per-example weighting of
    the preference losses.
    """
    return -policy_logps / completion_tokens.clamp(min=1)
