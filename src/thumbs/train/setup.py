"""Everything a run needs before its first step: the examples (after the feedback options and, for
DPO, pairing), class weights, the starting model with its adapter, the optimizer, and the checks
that stop a bad run before a model loads."""

from __future__ import annotations

import random
from pathlib import Path

from thumbs.config import Config
from thumbs.errors import ThumbsError


def precision(cfg: Config) -> str:
    import torch

    wanted = cfg.train.precision
    if wanted == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no"}.get(wanted, wanted)


def model_source(cfg: Config, run_dir: Path) -> str:
    """A local path for the starting model: ``tiny`` is built into the run folder, ``default`` cached."""
    from thumbs.models import resolve_model, save_tiny

    if cfg.model.name_or_path == "tiny":
        path = (run_dir / "base_model").resolve()
        if not (path / "config.json").exists():
            save_tiny(path, seed=cfg.train.seed, **cfg.model.tiny)
        return str(path)
    return resolve_model(cfg.model.name_or_path)


def training_table(cfg: Config):
    """Examples for the method, after the feedback options; plus what was done to them."""
    import pyarrow.compute as pc

    from thumbs.data.examples import load_examples
    from thumbs.train.pairing import feedback_from_pairs, pairs_from_feedback

    table = load_examples(cfg.data.train, split="train")
    paired = "chosen" in table.column_names
    summary: dict = {"source_rows": table.num_rows, "paired_input": paired}
    if cfg.data.limit:  # a seeded sample, never the head of a file ordered by label
        order = list(range(table.num_rows))
        random.Random(cfg.train.seed).shuffle(order)
        table = table.take(sorted(order[: cfg.data.limit]))
    if cfg.data.condition is not None:  # a study's seeded data condition, recorded with the run
        from thumbs.audit.conditions import apply_condition

        table, summary["condition"] = apply_condition(table, **cfg.data.condition.model_dump())
    if not paired:
        from thumbs.audit.weighting import apply_feedback_options

        table, options = apply_feedback_options(
            table,
            user_balance=cfg.data.user_balance,
            max_user_share=cfg.data.max_user_share,
            aggregate=cfg.data.aggregate,
            min_agreement=cfg.data.min_agreement,
        )
        summary["feedback_options"] = options
    if cfg.method == "dpo" and not paired:
        table, pairing = pairs_from_feedback(
            table,
            pairing=cfg.dpo.pairing,
            max_pairs_per_prompt=cfg.dpo.max_pairs_per_prompt,
            seed=cfg.train.seed,
        )
        summary["pairing"] = pairing
        if table.num_rows == 0:
            raise ThumbsError(
                "DPO found no pairs: no prompt has both a thumbs-up and a thumbs-down completion",
                hint="use method: kto, which needs no pairs",
            )
    elif cfg.method != "dpo" and paired:
        table = feedback_from_pairs(table)
    if cfg.method == "sft":
        table = table.filter(table["label"])
    if cfg.method in ("kto", "sft", "bco", "apo_zero"):
        n_desirable = pc.sum(table["label"]).as_py() or 0
        summary["desirable"], summary["undesirable"] = n_desirable, table.num_rows - n_desirable
    summary["examples"] = table.num_rows
    if table.num_rows == 0:
        raise ThumbsError("no training examples left", hint="check data.train and the data options")
    return table, summary


def class_weights(cfg: Config, summary: dict, say=print) -> None:
    """Resolve ``auto`` class weights (KTO, BCO, APO-zero: the method's config section) by KTO's
    paper rule from the class counts (logged with ``say``)."""
    section = getattr(cfg, cfg.method, None)
    if not hasattr(section, "desirable_weight"):
        return
    n_d, n_u = summary["desirable"], summary["undesirable"]
    auto = [k for k in ("desirable_weight", "undesirable_weight") if getattr(section, k) == "auto"]
    if auto and (n_d == 0 or n_u == 0):
        empty = "thumbs-up" if n_d == 0 else "thumbs-down"
        raise ThumbsError(
            f"class weights are 'auto' but the data has no {empty} examples ({n_d} up, {n_u} down)",
            hint=f"give numeric {cfg.method}.desirable_weight / {cfg.method}.undesirable_weight, "
            "or add examples of both classes",
        )
    if auto:
        from thumbs.audit.weighting import recommended_class_weights

        lam_d, lam_u = recommended_class_weights(n_d, n_u, cfg.data.deployment_positive_rate)
        # one weight given: keep the recommended ratio λ_D/λ_U, scaled by the given weight
        if auto == ["desirable_weight"]:
            lam_d, lam_u = section.undesirable_weight * lam_d / lam_u, section.undesirable_weight
        elif auto == ["undesirable_weight"]:
            lam_d, lam_u = section.desirable_weight, section.desirable_weight * lam_u / lam_d
        section.desirable_weight, section.undesirable_weight = lam_d, lam_u
    summary["class_weights"] = {
        "desirable": section.desirable_weight,
        "undesirable": section.undesirable_weight,
    }
    if n_d and n_u:
        ratio = section.desirable_weight * n_d / (section.undesirable_weight * n_u)
        summary["class_weights"]["weighted_ratio"] = ratio
        if not 1 <= ratio <= 4 / 3:
            say(
                f"thumbs: note: λ_D·n_D/(λ_U·n_U) = {ratio:.2f}, outside the paper's [1, 4/3]; see `thumbs audit`"
            )


def check_sharding(accelerator) -> None:
    """FSDP2 is supported; FSDP1 and DeepSpeed stop here with what to do instead (docs/cluster.md)."""
    kind = accelerator.distributed_type.value
    if kind == "DEEPSPEED":
        raise ThumbsError(
            "thumbs does not train under DeepSpeed: DeepSpeed steps the optimizer inside backward and "
            "scales the loss for its own accumulation, which thumbs' loop does itself",
            hint="use FSDP2 for sharding (examples/accelerate/fsdp.yaml) or DDP; see docs/cluster.md",
        )
    if kind == "FSDP" and accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise ThumbsError(
            "thumbs trains under FSDP2 only (FSDP1 flattens parameters, so its optimizer must be built "
            "after wrapping)",
            hint="set fsdp_version: 2 under fsdp_config in the Accelerate config (examples/accelerate/fsdp.yaml)",
        )


def checkpoint_activations(model, cfg: Config) -> None:
    """Gradient checkpointing (``model.gradient_checkpointing``) on every decoder layer but the last
    ``model.uncheckpointed_layers``, which keep their activations for the backward instead of
    recomputing them. The last ones: the backward reaches them first, so what they keep is freed
    earliest."""
    keep = cfg.model.uncheckpointed_layers
    if not cfg.model.gradient_checkpointing:
        if keep:
            raise ThumbsError(
                f"model.uncheckpointed_layers={keep} needs model.gradient_checkpointing=true",
                hint="turn gradient checkpointing on, or leave model.uncheckpointed_layers at 0",
            )
        return
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.model.lora.enabled:
        model.enable_input_require_grads()
    if not keep:
        return
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [
        m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing
    ]
    if keep > len(layers):
        raise ThumbsError(
            f"model.uncheckpointed_layers={keep}, but the model has {len(layers)} checkpointed layers",
            hint=f"use at most {len(layers)} (all of them is the same as model.gradient_checkpointing=false)",
        )
    for layer in layers[len(layers) - keep :]:
        layer.gradient_checkpointing = False


def build_model(cfg: Config, source: str):
    """The model to train: the base model, with a LoRA adapter when ``model.lora.enabled`` (a fresh
    one, or ``model.adapter`` carried on)."""
    from thumbs.models import load_model

    model = load_model(source)
    if cfg.model.lora.enabled and cfg.model.adapter:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, cfg.model.adapter, is_trainable=True)
    if cfg.model.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = cfg.model.lora
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules
            ),
        )
    return model


def adamw(params: list, cfg: Config):
    """AdamW, the fused kernel where the device has one: one pass over each tensor instead of a
    chain of foreach ops with their temporaries (on the 135M bench shape, CPU: 0.07 s a step against
    0.23 s). Same update to float rounding."""
    import torch

    kwargs = dict(lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(params, **kwargs)


def in_turn(accelerator, build):
    """``build()`` on the main process, then on the first process of every other machine, then on
    the rest: what it fetches or converts into a cache (a builtin dataset, the default model, the
    tiny model in the run folder) is made once per cache, never by two processes at a time. A user
    error is raised after the waits, so no process is left at one; the others meet it too.
    """
    main = accelerator.is_main_process
    result, error = None, None
    for turn in (main, accelerator.is_local_main_process and not main):
        if turn:
            try:
                result = build()
            except ThumbsError as err:
                error = err
        accelerator.wait_for_everyone()
    if error is not None:
        raise error
    return build() if result is None else result


def same_checkpoint(accelerator, step: int) -> None:
    """Every process resumes from the same step (each reads its own random state, so may skip another)."""
    if accelerator.num_processes == 1:
        return
    import torch

    steps = accelerator.gather(torch.tensor([step], device=accelerator.device)).tolist()
    if len(set(steps)) > 1:
        raise ThumbsError(
            f"the processes found different checkpoints to resume from (steps {steps})",
            hint="see the skipped checkpoints above; remove the broken one or pass --overwrite",
        )


def digest(items) -> int:
    """A 63-bit fingerprint of the tokenized examples, their labels and weights, in order."""
    import hashlib

    content = repr((items.seqs, items.label.tolist(), items.weight.tolist())).encode()
    return int.from_bytes(hashlib.blake2b(content, digest_size=7).digest(), "little")
