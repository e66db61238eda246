"""The losses against TRL (same log-probs in, same loss out) and against hand-computed values."""

import math

import pytest
import torch

from tests.trl_oracle import trl_apo_zero_unpaired_loss, trl_bco_pair_losses, trl_dpo_loss, trl_kto_loss
from thumbs.train.losses import (
    apo_zero_loss,
    bco_loss,
    dpo_loss,
    kl_reference_point,
    kto_loss,
    reward_shift,
    sft_loss,
)
from thumbs.train.methods import RewardShift


def _batch(seed, n, p_up=0.5):
    g = torch.Generator().manual_seed(seed)
    policy = -20 + 5 * torch.randn(n, generator=g)
    ref = policy + torch.randn(n, generator=g)
    policy_kl = -25 + 5 * torch.randn(n, generator=g)
    ref_kl = policy_kl + 0.5 * torch.randn(n, generator=g) - 0.3
    labels = torch.rand(n, generator=g) < p_up
    return policy, ref, policy_kl, ref_kl, labels


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.33, 1.0), (1.0, 3.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_kto_matches_trl(beta, weights, seed):
    policy, ref, policy_kl, ref_kl, labels = _batch(seed, 9)
    z0 = kl_reference_point(policy_kl, ref_kl)
    losses, rewards = kto_loss(
        policy, ref, labels, z0, beta=beta, desirable_weight=weights[0], undesirable_weight=weights[1]
    )
    expected = trl_kto_loss(
        policy,
        ref,
        labels,
        policy_kl,
        ref_kl,
        beta=beta,
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
    )
    assert losses.mean().item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert torch.allclose(rewards, beta * (policy - ref))


@pytest.mark.parametrize("labels", [[True] * 5, [False] * 5])
def test_kto_matches_trl_one_class(labels):
    policy, ref, policy_kl, ref_kl, _ = _batch(3, 5)
    labels = torch.tensor(labels)
    z0 = kl_reference_point(policy_kl, ref_kl)
    losses, _ = kto_loss(policy, ref, labels, z0, beta=0.1, desirable_weight=2.0, undesirable_weight=0.5)
    expected = trl_kto_loss(
        policy, ref, labels, policy_kl, ref_kl, beta=0.1, desirable_weight=2.0, undesirable_weight=0.5
    )
    assert losses.mean().item() == pytest.approx(expected, rel=1e-5)


def test_kto_hand_computed():
    # r = [2, -1]; KL pairs mean 0.5 -> z0 = 0.5; beta 0.1; lambda_D 2, lambda_U 1
    policy, ref = torch.tensor([-10.0, -12.0]), torch.tensor([-12.0, -11.0])
    z0 = kl_reference_point(torch.tensor([-5.0, -6.0]), torch.tensor([-5.5, -6.5]))
    assert z0.item() == pytest.approx(0.5)
    losses, _ = kto_loss(policy, ref, torch.tensor([True, False]), z0, beta=0.1, desirable_weight=2.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert losses[0].item() == pytest.approx(2 * (1 - sig(0.1 * (2 - 0.5))))
    assert losses[1].item() == pytest.approx(1 - sig(0.1 * (0.5 - (-1))))


def test_z0_is_clamped_and_carries_no_gradient():
    policy_kl = torch.tensor([-5.0, -6.0], requires_grad=True)
    z0 = kl_reference_point(policy_kl, torch.tensor([-4.0, -4.0]))  # mean log-ratio -1.5 < 0
    assert z0.item() == 0.0
    assert not z0.requires_grad


def test_z0_sums_and_counts_across_processes():
    """A fake all-reduce adding another process's (sum, count): the mean is over both."""
    other = torch.tensor([6.0, 2.0])  # another process: 2 pairs summing to 6
    z0 = kl_reference_point(torch.tensor([1.0]), torch.tensor([0.0]), all_reduce=lambda t: t.add_(other))
    assert z0.item() == pytest.approx(7 / 3)
    empty = kl_reference_point(torch.zeros(0), torch.zeros(0), all_reduce=lambda t: t.add_(other))
    assert empty.item() == pytest.approx(3.0)  # a process with no pairs adds nothing, and no NaN


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
def test_dpo_matches_trl(beta, label_smoothing):
    g = torch.Generator().manual_seed(5)
    chosen, rejected = -20 + 4 * torch.randn(6, generator=g), -22 + 4 * torch.randn(6, generator=g)
    ref_chosen, ref_rejected = chosen + torch.randn(6, generator=g), rejected + torch.randn(6, generator=g)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        chosen, rejected, ref_chosen, ref_rejected, beta=beta, label_smoothing=label_smoothing
    )
    expected = trl_dpo_loss(
        chosen, rejected, ref_chosen, ref_rejected, beta=beta, label_smoothing=label_smoothing
    )
    assert losses.mean().item() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(
        chosen_rewards - rejected_rewards, beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    )


def test_dpo_hand_computed():
    losses, _, _ = dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5
    )
    # h = 0.5 * ((-1 + 2) - (-3 + 2)) = 1
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_sft_is_per_token_nll():
    assert sft_loss(torch.tensor([-6.0, -2.0]), torch.tensor([3, 1])).tolist() == [2.0, 2.0]


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.33, 1.0), (1.0, 3.0)])
@pytest.mark.parametrize("p_up", [0.5, 1.0, 0.0])  # mixed, thumbs-up only, thumbs-down only
def test_apo_zero_matches_trl_apo_zero_unpaired(beta, weights, p_up):
    policy, ref, _, _, labels = _batch(7, 9, p_up=p_up)
    losses, rewards = apo_zero_loss(
        policy, ref, labels, beta=beta, desirable_weight=weights[0], undesirable_weight=weights[1]
    )
    expected = trl_apo_zero_unpaired_loss(
        policy, ref, labels, beta=beta, desirable_weight=weights[0], undesirable_weight=weights[1]
    )
    assert losses.mean().item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert torch.allclose(rewards, beta * (policy - ref))


def test_apo_zero_hand_computed():
    # r = [2, 2]: the thumbs-up pays 1 − σ(0.2), the thumbs-down σ(0.2) (weight 3)
    policy, ref = torch.tensor([-10.0, -10.0]), torch.tensor([-12.0, -12.0])
    losses, _ = apo_zero_loss(policy, ref, torch.tensor([True, False]), beta=0.1, undesirable_weight=3.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert losses.tolist() == pytest.approx([1 - sig(0.2), 3 * sig(0.2)])


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_bco_without_shift_equals_trl_bco_pair_split_into_two_examples(beta, seed):
    """Each DPO pair becomes a thumbs-up (its chosen) and a thumbs-down (its rejected) example;
    with δ = 0 the two BCO losses add up to TRL's bco_pair loss of that pair."""
    g = torch.Generator().manual_seed(seed)
    chosen, rejected = -20 + 4 * torch.randn(6, generator=g), -22 + 4 * torch.randn(6, generator=g)
    ref_chosen, ref_rejected = chosen + torch.randn(6, generator=g), rejected + torch.randn(6, generator=g)
    policy, ref = torch.cat([chosen, rejected]), torch.cat([ref_chosen, ref_rejected])
    labels = torch.tensor([True] * 6 + [False] * 6)
    losses, rewards = bco_loss(policy, ref, labels, torch.tensor(0.0), beta=beta)
    expected = trl_bco_pair_losses(chosen, rejected, ref_chosen, ref_rejected, beta=beta)
    assert (losses[:6] + losses[6:]).tolist() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(rewards, beta * (policy - ref))


def test_bco_hand_computed_with_shift_and_weights():
    # β·r = [0.3, 0.3], δ = 0.1: the thumbs-up pays −log σ(0.2) (×2), the thumbs-down −log σ(−0.2)
    policy, ref = torch.tensor([-9.0, -9.0]), torch.tensor([-12.0, -12.0])
    losses, _ = bco_loss(
        policy, ref, torch.tensor([True, False]), torch.tensor(0.1), beta=0.1, desirable_weight=2.0
    )
    assert losses.tolist() == pytest.approx([2 * math.log(1 + math.exp(-0.2)), math.log(1 + math.exp(0.2))])


def test_reward_shift_is_the_running_mean_of_every_reward_seen():
    """Three microbatches of known rewards, of both classes and different sizes: after each, δ is
    the mean of all rewards so far, this microbatch's included (computed by hand)."""
    shift = RewardShift()
    steps = [
        ([0.2, -0.4], 0.2 - 0.4),
        ([1.0], 0.2 - 0.4 + 1.0),
        ([0.5, 0.5, -2.0], 0.2 - 0.4 + 1.0 + 0.5 + 0.5 - 2.0),
    ]
    seen = 0
    for rewards, total in steps:
        seen += len(rewards)
        delta = shift.update(torch.tensor(rewards))
        assert delta.item() == pytest.approx(total / seen, abs=1e-7)
    assert shift.state_dict() == pytest.approx({"reward_sum": -0.2, "reward_count": 6.0})
    restored = RewardShift()
    restored.load_state_dict(shift.state_dict())
    assert restored.update(torch.tensor([1.6])).item() == pytest.approx((-0.2 + 1.6) / 7, abs=1e-7)
    assert not reward_shift(torch.tensor([1.0], requires_grad=True), torch.zeros(2, dtype=torch.float64))[
        0
    ].requires_grad


def test_reward_shift_sums_and_counts_across_processes():
    """A fake all-reduce adding another process's (sum, count): δ is the mean over both, and a
    process with an empty microbatch gets the same δ, not NaN."""
    other = torch.tensor([3.0, 2.0], dtype=torch.float64)  # another process: 2 rewards summing to 3
    delta, totals = reward_shift(
        torch.tensor([1.0]), torch.zeros(2, dtype=torch.float64), all_reduce=lambda t: t.add_(other)
    )
    assert delta.item() == pytest.approx(4 / 3)
    delta, _ = reward_shift(torch.zeros(0), totals, all_reduce=lambda t: t.add_(other))
    assert delta.item() == pytest.approx(7 / 5)
