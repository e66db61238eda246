"""TRL as a test oracle: run its KTO, DPO (and their APO-zero, BCO-pair) loss code on log-probabilities we choose.

TRL 1.16 computes its losses inside ``_compute_loss``, from a model's per-token log-probs. We call
that method on a trainer shell holding only the attributes it reads, with a stand-in model whose
per-token log-probs sum to the sequence log-probs under test. The arithmetic is TRL's own.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import torch


class _LogpsModel:
    """Returns, for row b, log_probs [B, 1] = value[b] (looked up by the row's marker token)."""

    training = True

    def __init__(self, values_by_marker: dict[int, float]):
        self.values = values_by_marker

    def __call__(self, input_ids, **kwargs):
        values = torch.tensor([self.values[int(row[0])] for row in input_ids], dtype=torch.float32)
        log_probs = values.unsqueeze(1)
        return SimpleNamespace(
            log_probs=log_probs,
            entropy=torch.zeros_like(log_probs),
            mean_logits=torch.zeros_like(log_probs),
            is_top1=torch.zeros_like(log_probs, dtype=torch.bool),
        )


def _shell(cls, **attrs):
    from accelerate import Accelerator

    trainer = object.__new__(cls)
    trainer.__dict__.update(
        accelerator=Accelerator(cpu=True),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
        aux_loss_enabled=False,
        **attrs,
    )
    return trainer


def trl_kto_loss(
    policy, ref, labels, policy_kl, ref_kl, *, beta, desirable_weight, undesirable_weight
) -> float:
    """TRL's KTO loss (loss_type='kto', precomputed reference log-probs) for one batch."""
    from trl.trainer.kto_trainer import KTOTrainer

    n = len(labels)
    values = {i: float(policy[i]) for i in range(n)} | {1000 + i: float(policy_kl[i]) for i in range(n)}
    model = _LogpsModel(values)
    trainer = _shell(
        KTOTrainer, model=model, beta=beta, loss_type="kto", desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight, precompute_ref_logps=True, calculate_KL=True,
    )  # fmt: skip
    inputs = {
        "input_ids": torch.tensor([[i, 0] for i in range(n)]),
        "attention_mask": torch.ones(n, 2, dtype=torch.long),
        "completion_mask": torch.tensor([[0, 1]] * n),
        "KL_input_ids": torch.tensor([[1000 + i, 0] for i in range(n)]),
        "KL_attention_mask": torch.ones(n, 2, dtype=torch.long),
        "KL_completion_mask": torch.tensor([[0, 1]] * n),
        "label": torch.as_tensor(labels, dtype=torch.bool),
        "ref_logps": torch.as_tensor(ref, dtype=torch.float32),
        "ref_KL_logps": torch.as_tensor(ref_kl, dtype=torch.float32),
    }
    return float(trainer._compute_loss(model, inputs, return_outputs=False))


def _trl_dpo(chosen, rejected, ref_chosen, ref_rejected, *, beta, loss_type, label_smoothing=0.0) -> float:
    """TRL's DPO ``_compute_loss`` with one ``loss_type`` on one batch of pairs."""
    from trl.trainer.dpo_trainer import DPOTrainer

    n = len(chosen)
    model = _LogpsModel({i: float(v) for i, v in enumerate(list(chosen) + list(rejected))})
    trainer = _shell(
        DPOTrainer, model=model, beta=beta, label_smoothing=label_smoothing, loss_types=[loss_type],
        loss_weights=[1.0], precompute_ref_logps=True, ld_alpha=None, f_divergence_type="reverse_kl",
        use_weighting=False, args=SimpleNamespace(),
    )  # fmt: skip
    inputs = {
        "input_ids": torch.tensor([[i, 0] for i in range(2 * n)]),
        "attention_mask": torch.ones(2 * n, 2, dtype=torch.long),
        "completion_mask": torch.tensor([[0, 1]] * (2 * n)),
        "ref_chosen_logps": torch.as_tensor(ref_chosen, dtype=torch.float32),
        "ref_rejected_logps": torch.as_tensor(ref_rejected, dtype=torch.float32),
    }
    return float(trainer._compute_loss(model, inputs, return_outputs=False))


def trl_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, *, beta, label_smoothing=0.0) -> float:
    """TRL's DPO loss. ``sigmoid`` for label_smoothing 0; with smoothing TRL 1.16's sigmoid ignores it,
    so conservative DPO is checked against ``aot_unpaired`` on one pair at a time, where sorting is
    the identity and its formula is -(1-ε)·logσ(βh) - ε·logσ(-βh)."""
    if label_smoothing == 0:
        return _trl_dpo(chosen, rejected, ref_chosen, ref_rejected, beta=beta, loss_type="sigmoid")
    per_pair = [
        _trl_dpo([c], [r], [rc], [rr], beta=beta, loss_type="aot_unpaired", label_smoothing=label_smoothing)
        for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected)
    ]
    return sum(per_pair) / len(per_pair)


def trl_bco_pair_losses(chosen, rejected, ref_chosen, ref_rejected, *, beta) -> list[float]:
    """TRL 1.16's DPO ``bco_pair`` loss of each pair, −logσ(β r_w) − logσ(−β r_l): BCO's two terms
    on a pair, without the reward shift (TRL 1.16 no longer ships unpaired BCO)."""
    return [
        _trl_dpo([c], [r], [rc], [rr], beta=beta, loss_type="bco_pair")
        for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected)
    ]


def trl_apo_zero_unpaired_loss(policy, ref, labels, *, beta, desirable_weight, undesirable_weight) -> float:
    """TRL's KTO trainer with loss_type='apo_zero_unpaired' (no KL pass) for one batch: the mean loss."""
    from trl.trainer.kto_trainer import KTOTrainer

    n = len(labels)
    model = _LogpsModel({i: float(policy[i]) for i in range(n)})
    trainer = _shell(
        KTOTrainer, model=model, beta=beta, loss_type="apo_zero_unpaired", desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight, precompute_ref_logps=True, calculate_KL=False,
    )  # fmt: skip
    inputs = {
        "input_ids": torch.tensor([[i, 0] for i in range(n)]),
        "attention_mask": torch.ones(n, 2, dtype=torch.long),
        "completion_mask": torch.tensor([[0, 1]] * n),
        "label": torch.as_tensor(labels, dtype=torch.bool),
        "ref_logps": torch.as_tensor(ref, dtype=torch.float32),
    }
    return float(trainer._compute_loss(model, inputs, return_outputs=False))
