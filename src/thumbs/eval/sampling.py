"""Sampling completions for evaluation: batched, KV-cached, one random stream per sample.

Each sample i draws its own uniforms from a generator seeded by (seed, i), and picks the token
whose cumulative probability (in vocabulary order) first exceeds its uniform: inverse-CDF
sampling. So a sample does not depend on which batch it ran in, the policy and the reference
see the same random numbers for the same prompt, identical models give identical samples, and
close models give mostly shared tokens (common random numbers: a paired comparison with less
noise).

The decode loop is thumbs' own, over the model's KV cache, rather than ``generate``: a prompt
that several samples share (an eval repeats its prompts to reach n; the builtin movie task has
one) is run through the model once and its cache copied to every sample, and only the last
position's logits are computed. It picks exactly the tokens ``generate`` with
``InverseCDFSampler`` picks (a test; ``bench/eval.py`` checks it on the default model too):
finished rows are fed the pad token, positions follow the attention mask as ``generate``'s do.

On a CPU a sample's tokens do not depend on the batch it ran in, to the bit: PyTorch's CPU
attention kernel rounds a row's result differently in batches of different sizes (with two
threads, a batch of 16 and one of 64 gave 2 of 64 SmolLM2 samples a different late token), so
while thumbs samples, a one-token step attends through plain matmuls instead
(``decode_attention``), which give each row the same result in any batch. Prompts of one length,
or a prompt repeated, sample the same in batches of any size; prompts of different lengths are
left-padded to the longest in their batch, and the padding a batch needs can still move a
rounding. The key/value cache is allocated once for the whole answer rather than concatenated a
step at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor
from transformers.cache_utils import DynamicLayer

from thumbs.cores import adjust_threads
from thumbs.tokenize import pack_shared
from thumbs.train.logprobs import base_model, completion_logps, head_logits

DECODE_ATTENTION = "thumbs_decode"
# Names how samples are computed, for the eval cache's key (thumbs.eval.memo): it changes whenever a
# change to this module can change a sample's tokens, so a cached sample is never another version's.
SAMPLER = "inverse-cdf float64; one-token attention by matmuls (batch-invariant); 2026-12-01"


def decode_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """SDPA, except that one new token per row attends through two matmuls and a softmax.

    transformers' attention interface: query [B, H, q, D], key/value [B, KV, T, D] (KV divides H),
    the mask as ``sdpa_mask`` makes it (boolean, or None where nothing is masked); returns
    ([B, q, H, D], None). For q = 1 the query heads of each key/value head are laid out as that
    head's rows, as transformers' ``pack_gqa`` does, so no key/value is repeated.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = kwargs.get("position_bias") is None and kwargs.get("softcap") is None and not dropout
    shared_mask = attention_mask is None or attention_mask.shape[1] == 1
    if query.shape[2] != 1 or not plain or not shared_mask or query.shape[1] % key.shape[1]:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    batch, heads, _, dim = query.shape
    groups = key.shape[1]
    scores = torch.matmul(query.reshape(batch, groups, heads // groups, dim), key.transpose(-1, -2))
    scores = scores * (dim**-0.5 if scaling is None else scaling)
    if attention_mask is not None:  # [B, 1, 1, T]: the same for every head
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    out = torch.matmul(torch.softmax(scores, dim=-1), value)  # [B, KV, H / KV, D]
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def _register_decode_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


@contextlib.contextmanager
def batch_invariant(model: Any) -> Iterator[None]:
    """While sampling on a CPU, a model that attends through SDPA attends through ``decode_attention``.

    Eager attention (Gemma 2's softcap) and flash kernels are left alone, and so is a GPU: there
    the matmuls themselves pick kernels by shape, so rows need not round alike in batches of
    different sizes whatever the attention does (measured on CPUs only).
    """
    config = base_model(model).config
    on_cpu = next(model.parameters()).device.type == "cpu"
    if not on_cpu or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    _register_decode_attention()
    config._attn_implementation = DECODE_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views into buffers allocated once for the answer."""

    @classmethod
    def around(cls, layer: DynamicLayer, extra: int) -> ReservedLayer:
        new = cls.__new__(cls)
        new.__dict__.update(layer.__dict__)
        batch, heads, length, _ = layer.keys.shape
        new.key_buffer = layer.keys.new_empty(batch, heads, length + extra, layer.keys.shape[-1])
        new.value_buffer = layer.values.new_empty(batch, heads, length + extra, layer.values.shape[-1])
        new.key_buffer[:, :, :length] = layer.keys
        new.value_buffer[:, :, :length] = layer.values
        new.keys, new.values = new.key_buffer[:, :, :length], new.value_buffer[:, :, :length]
        return new

    def update(self, key_states, value_states, *args, **kwargs):
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if end > self.key_buffer.shape[-2] or key_states.shape[0] != self.key_buffer.shape[0]:
            return super().update(key_states, value_states, *args, **kwargs)  # outgrown: concatenate
        self.key_buffer[:, :, start:end] = key_states
        self.value_buffer[:, :, start:end] = value_states
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values


def reserve(cache: Any, extra: int) -> None:
    """Give each full-attention layer of a prefilled ``DynamicCache`` room for ``extra`` more
    positions, written in place as they come, instead of a new concatenated tensor per step."""
    layers = getattr(cache, "layers", None)
    for i, layer in enumerate(layers or []):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.dim() == 4:
            layers[i] = ReservedLayer.around(layer, extra)


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index``: independent streams for every (seed, index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def sample_uniforms(seeds: Sequence[int], steps: int) -> torch.Tensor:
    """[len(seeds), steps] float64 uniforms: row i is sample i's own stream."""
    return torch.stack(
        [torch.rand(steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds]
    )


def inverse_cdf_pick(
    scores: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float
) -> torch.Tensor:
    """Token per row of ``scores`` [B, V]: the first whose tempered, nucleus-cut CDF passes its uniform.

    ``temperature`` 0 is greedy (argmax).
    """
    if temperature == 0:
        return scores.argmax(-1)
    scores = scores.double()
    probs = torch.softmax(scores if temperature == 1 else scores / temperature, dim=-1)  # x / 1 is x
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # the first token always stays
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    cdf = probs.cumsum(-1)
    target = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).clamp(max=scores.shape[-1] - 1).squeeze(-1)


class InverseCDFSampler(LogitsProcessor):
    """``inverse_cdf_pick`` for transformers' ``generate``: each row's scores become a one-hot pick.

    thumbs samples with its own loop; this is the oracle it is tested and benchmarked against.
    """

    def __init__(self, uniforms: torch.Tensor, prompt_width: int, temperature: float, top_p: float):
        self.uniforms, self.prompt_width = uniforms, prompt_width
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature == 0:
            return scores  # greedy
        step = input_ids.shape[1] - self.prompt_width
        tokens = inverse_cdf_pick(scores, self.uniforms[:, step], self.temperature, self.top_p)
        picked = torch.full_like(scores, float("-inf"))
        return picked.scatter(-1, tokens.unsqueeze(-1), 0.0)


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a completion: the tokenizer's EOS and the model's generation EOS ids."""
    ids = {tokenizer.eos_token_id}
    generation = getattr(model, "generation_config", None)
    extra = getattr(generation, "eos_token_id", None) if generation is not None else None
    ids.update(extra if isinstance(extra, list) else [extra])
    return sorted(i for i in ids if i is not None)


def stop_trimmed(ids: list[int], stops: list[int]) -> list[int]:
    """The completion without its stop token."""
    return ids[:-1] if ids and ids[-1] in stops else ids


def pad_id_of(tokenizer: Any, stops: list[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]


def prefill(model: Any, prompts: Sequence[list[int]], pad_id: int):
    """Run each distinct prompt once; the cache, last hidden state and mask are copied per row.

    Returns (cache, last_hidden [B, H], attention_mask [B, W], next_position [B]) for the rows of
    ``prompts``, prompts left-padded to the longest, positions counted over real tokens only.
    """
    device = next(model.parameters()).device
    distinct: dict[tuple[int, ...], int] = {}
    index = torch.tensor([distinct.setdefault(tuple(p), len(distinct)) for p in prompts], device=device)
    width = max(len(p) for p in distinct)
    input_ids = torch.full((len(distinct), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(distinct), width), dtype=torch.long)
    for row, ids in enumerate(distinct):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    out = base_model(model).get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True
    )
    cache = out.cache
    if len(distinct) != len(prompts):  # else every row is its own prompt, in order
        cache.batch_select_indices(index)
    return cache, out.last_hidden_state[index, -1], attention_mask[index], positions[index, -1] + 1


def generate(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[list[int]],
    seeds: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    progress: Any = None,
    hidden_out: list | None = None,
) -> list[list[int]]:
    """Completion token ids per prompt (up to and including a stop token).

    With ``hidden_out`` (a list), each sample's final hidden states that predicted its tokens,
    [len(completion), H], are appended to it: the policy's half of the KL pass, already computed.
    """
    stops = stop_ids(model, tokenizer)
    pad_id = pad_id_of(tokenizer, stops)
    device = next(model.parameters()).device
    stop_tensor = torch.tensor(stops, device=device)
    decoder = base_model(model).get_decoder()
    completions: list[list[int]] = []
    with torch.inference_mode(), batch_invariant(model):
        for start in range(0, len(prompt_ids), batch_size):
            rows = prompt_ids[start : start + batch_size]
            uniforms = sample_uniforms(seeds[start : start + batch_size], max_new_tokens).to(device)
            cache, hidden, attention_mask, position = prefill(model, rows, pad_id)
            reserve(cache, max_new_tokens)
            done = torch.zeros(len(rows), dtype=torch.bool, device=device)
            picked, states = [], []
            for step in range(max_new_tokens):
                adjust_threads()  # cheap: it looks at the machine at most every 2 s (thumbs.cores)
                if hidden_out is not None:
                    states.append(hidden)
                logits = head_logits(model, hidden)
                token = inverse_cdf_pick(logits, uniforms[:, step], temperature, top_p)
                token = token.masked_fill(done, pad_id)
                picked.append(token)
                done |= torch.isin(token, stop_tensor)
                if bool(done.all()) or step == max_new_tokens - 1:
                    break
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
                hidden = decoder(
                    input_ids=token.unsqueeze(1),
                    attention_mask=attention_mask,
                    position_ids=position.unsqueeze(1),
                    cache=cache,
                    use_cache=True,
                ).last_hidden_state[:, -1]
                position = position + 1
            states = torch.stack(states, dim=1) if states else None
            for row, tokens in enumerate(torch.stack(picked, dim=1).tolist()):
                cut = next((i + 1 for i, token in enumerate(tokens) if token in stops), len(tokens))
                completions.append(tokens[:cut])
                if states is not None:
                    hidden_out.append(states[row, :cut])
            if progress is not None:
                progress.update(len(rows))
    return completions


def transformers_generate(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[list[int]],
    seeds: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    invariant: bool = True,
) -> list[list[int]]:
    """``generate``'s samples through transformers' ``generate``: the oracle it is tested against.

    ``invariant=False`` leaves the model's own attention in place, as thumbs sampled before its
    samples were made batch-invariant (``bench/eval.py``'s "before"): the same picks but for a
    rounding that, now and then, sends a sample its own way."""
    from transformers import GenerationConfig, LogitsProcessorList

    device = next(model.parameters()).device
    stops = stop_ids(model, tokenizer)
    pad_id = pad_id_of(tokenizer, stops)
    # Explicit neutral settings: a model's own generation defaults (penalties) must not bend the samples.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=True,
        eos_token_id=stops,
        pad_token_id=pad_id,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
    )
    completions: list[list[int]] = []
    for start in range(0, len(prompt_ids), batch_size):
        adjust_threads()
        rows = prompt_ids[start : start + batch_size]
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        uniforms = sample_uniforms(seeds[start : start + batch_size], max_new_tokens)
        sampler = InverseCDFSampler(uniforms, width, temperature, top_p)
        with torch.inference_mode(), batch_invariant(model) if invariant else contextlib.nullcontext():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler]),
            )
        for tokens in out[:, width:].tolist():
            cut = next((i + 1 for i, token in enumerate(tokens) if token in stops), len(tokens))
            completions.append(tokens[:cut])
    return completions


def sequence_logps(
    model: Any,
    prompt_ids: Sequence[list[int]],
    completion_ids: Sequence[list[int]],
    pad_id: int,
    batch_size: int,
) -> np.ndarray:
    """log π(completion | prompt) summed over completion tokens, per pair, as float64. Completions
    of one prompt share its computation (``pack_shared``): a held-out set of votes on one prompt
    computes that prompt once per row, not once per vote."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        seqs = [
            (p + c, len(p))
            for p, c in zip(
                prompt_ids[start : start + batch_size], completion_ids[start : start + batch_size]
            )
        ]
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in pack_shared(seqs, pad_id).items()}
        with torch.inference_mode():
            logps, _ = completion_logps(model, **batch)
        out.append(logps.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
