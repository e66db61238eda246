"""The policy under evaluation and its reference, from a run folder or a model folder.

A run folder (``config.yaml`` + ``final/``) names its starting model in ``model.name_or_path``.
``final/`` is a full model, compared with a separately loaded reference, or a LoRA adapter. An
adapter is merged into a copy of its base when the device has room for two copies of the weights
(a LoRA layer left unmerged costs its extra matmuls at every token: 35 s against 26 s for 200
held-out votes on SmolLM2-135M here), and the reference is the base itself; without that room the
reference is the same loaded model with the adapter switched off (PEFT's ``disable_adapter()``),
so no second copy of the weights is held. ``Models.policy_weights`` says which.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thumbs.errors import ThumbsError
from thumbs.models import adapter_disabled


@dataclass
class Models:
    """The policy and its reference; ``reference`` None means the policy with its LoRA adapter off."""

    policy: Any
    reference: Any | None
    tokenizer: Any
    policy_path: str
    reference_path: str
    policy_weights: str = "full model"

    def reference_scope(self):
        if self.reference is not None:
            return nullcontext(self.reference)
        return adapter_disabled(self.policy)


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").exists() or (path / "tokenizer.json").exists()


def load_models(
    model_path: Path, reference: str | None, default_reference: str | None, device: str
) -> Models:
    """Policy (a full model or base + LoRA adapter) and reference, in eval mode on ``device``."""
    from thumbs.models import load_model, load_tokenizer, resolve_model

    adapter_config = model_path / "adapter_config.json"
    if adapter_config.exists():
        from peft import PeftModel

        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path") or default_reference
        if not base:
            raise ThumbsError(
                "the adapter names no base model", file=str(adapter_config), hint="pass --reference"
            )
        base = resolve_model(base)
        policy = PeftModel.from_pretrained(load_model(base), str(model_path))
        ref_path = resolve_model(reference) if reference else base
        if reference:
            ref_model, weights = load_model(ref_path), "LoRA adapter on its base"
        elif _room_for_copy(policy, device):
            ref_model, weights = load_model(ref_path), "LoRA merged into a copy of its base"
            policy = policy.merge_and_unload()
        else:
            ref_model, weights = None, "LoRA adapter on its base, switched off for the reference"
    else:
        if not (model_path / "config.json").exists():
            raise ThumbsError(
                "not a model folder (no config.json or adapter_config.json)",
                file=str(model_path),
                hint="give a run directory (config.yaml + final/) or a saved model folder",
            )
        ref_path = reference or default_reference
        if not ref_path:
            raise ThumbsError(
                "a model folder has no recorded starting model to compare with",
                file=str(model_path),
                hint="pass --reference MODEL (the model it was trained from)",
            )
        ref_path = resolve_model(ref_path)
        base = ref_path
        policy, ref_model = load_model(str(model_path)), load_model(ref_path)
        weights = "full model"
    tokenizer = load_tokenizer(str(model_path) if _has_tokenizer(model_path) else base)
    tokenizer.padding_side = "left"
    same_vocab = ref_model is None or not _has_tokenizer(Path(ref_path))
    if not same_vocab and load_tokenizer(ref_path).get_vocab() != tokenizer.get_vocab():
        raise ThumbsError(
            f"the policy and the reference '{ref_path}' use different tokenizers",
            hint="KL and implicit rewards compare token log-probs: use the model the policy was trained from",
        )
    for model in (policy, ref_model):
        if model is not None:
            model.to(device).eval()
    return Models(policy, ref_model, tokenizer, str(model_path), ref_path, weights)


def _room_for_copy(model, device: str) -> bool:
    """Whether ``device`` has free memory for three more copies of ``model``'s weights (the copy
    itself, and room to spare for activations and the KV cache)."""
    import torch

    need = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    if device.startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free > need
    if device == "cpu":
        import psutil

        return psutil.virtual_memory().available > need
    return False


def resolve_target(target: str | Path):
    """(run_dir or None, its Config or None, the policy's model folder)."""
    from thumbs.config import load_config

    path = Path(target)
    if not path.exists():
        raise ThumbsError(
            "run directory or model not found",
            file=str(path),
            hint="give a run directory written by `thumbs train` or a saved model folder",
        )
    if (path / "config.yaml").exists() and not (path / "config.json").exists():
        config = load_config(path / "config.yaml")
        final = path / "final"
        if not final.exists():
            raise ThumbsError(
                "the run has no final/ model yet (training unfinished or failed?)",
                file=str(path),
                hint="let `thumbs train` finish, or evaluate a checkpoint folder with --reference",
            )
        return path, config, final
    return None, None, path


def load_policy(model_path: Path, default_reference: str | None, device: str):
    """(policy, tokenizer) alone, in eval mode on ``device``: a full model or base + LoRA adapter."""
    from thumbs.models import load_model, load_tokenizer, resolve_model

    adapter_config = model_path / "adapter_config.json"
    if adapter_config.exists():
        from peft import PeftModel

        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path") or default_reference
        if not base:
            raise ThumbsError("the adapter names no base model", file=str(adapter_config))
        base = resolve_model(base)
        policy = PeftModel.from_pretrained(load_model(base), str(model_path))
    elif (model_path / "config.json").exists():
        base = resolve_model(default_reference) if default_reference else str(model_path)
        policy = load_model(str(model_path))
    else:
        raise ThumbsError(
            "not a model folder (no config.json or adapter_config.json)",
            file=str(model_path),
            hint="give a run directory (config.yaml + final/) or a saved model folder",
        )
    tokenizer = load_tokenizer(str(model_path) if _has_tokenizer(model_path) else base)
    tokenizer.padding_side = "left"
    return policy.to(device).eval(), tokenizer
