"""Evaluation precise enough to decide: token-level KL, the paired reward interval, head-to-head,
and a sampler that picks what transformers' generate picks.

Tiny models built from a config; nothing is downloaded.
"""

from __future__ import annotations

import itertools
import json
import math
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from thumbs.eval.divergence import kl_along_samples
from thumbs.eval.metrics import paired_difference, t_quantile
from thumbs.eval.sampling import generate, sample_seed, transformers_generate

EOS, PAD, VOCAB = 4, 0, 5
PROMPT = [1, 2, 3, 1]


def tiny_lm(seed: int, vocab: int = VOCAB, sharpness: float = 40.0):
    """A one-layer Llama over a five-token vocabulary (token 4 ends a completion)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD,
        attn_implementation="sdpa", dtype="float64",
    )  # fmt: skip
    model = LlamaForCausalLM(config).double().eval()
    with torch.no_grad():  # sharper next-token distributions than the default init gives
        model.lm_head.weight.mul_(sharpness)
    return model


TOKENS = SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD)


def every_completion(length: int) -> list[list[int]]:
    """Every completion of at most ``length`` tokens: stopped at EOS, or cut at ``length``."""
    words = [t for t in range(VOCAB) if t != EOS]
    stopped = [list(w) + [EOS] for k in range(length - 1) for w in itertools.product(words, repeat=k)]
    return stopped + [
        list(w) + [last] for w in itertools.product(words, repeat=length - 1) for last in range(VOCAB)
    ]


def exact_logps(model, completions: list[list[int]]) -> np.ndarray:
    """log π(y | PROMPT) in float64, one unpadded forward per completion."""
    out = []
    with torch.no_grad():
        for tokens in completions:
            ids = torch.tensor([PROMPT + tokens])
            logps = torch.log_softmax(model(input_ids=ids).logits[0, len(PROMPT) - 1 : -1].double(), -1)
            out.append(float(logps.gather(-1, torch.tensor(tokens).unsqueeze(-1)).sum()))
    return np.array(out)


# ---- token-level KL -------------------------------------------------------------------------------


def test_token_kl_equals_the_exact_kl_over_every_completion_and_samples_agree():
    policy, reference = tiny_lm(1), tiny_lm(2)
    length = 3
    space = every_completion(length)
    prompts = [PROMPT] * len(space)
    logp, logq = exact_logps(policy, space), exact_logps(reference, space)
    assert np.exp(logp).sum() == pytest.approx(1.0, abs=1e-9)  # the enumeration is the whole space
    exact = float(np.sum(np.exp(logp) * (logp - logq)))
    assert exact > 0.05

    ratio, token_kl = kl_along_samples(policy, lambda: nullcontext(reference), prompts, space, PAD, 64, 7)
    assert ratio == pytest.approx(logp - logq, abs=1e-9)  # sequence level, from the same pass
    assert (token_kl >= -1e-12).all()
    # Chain rule: E_y Σ_t KL(π(·|y<t) ‖ π_ref(·|y<t)) over the whole space is the sequence KL.
    assert float(np.sum(np.exp(logp) * token_kl)) == pytest.approx(exact, rel=1e-9)

    def estimate(n: int):
        seeds = [sample_seed(7, i) for i in range(n)]
        samples = generate(policy, TOKENS, [PROMPT] * n, seeds, max_new_tokens=length, temperature=1.0,
                           top_p=1.0, batch_size=128)  # fmt: skip
        r, k = kl_along_samples(policy, lambda: nullcontext(reference), [PROMPT] * n, samples, PAD, 128)
        se = lambda v: v.std(ddof=1) / math.sqrt(n)  # noqa: E731
        return r.mean(), se(r), k.mean(), se(k)

    seq_mean, seq_se, tok_mean, tok_se = estimate(2000)
    assert abs(tok_mean - exact) < 4 * tok_se
    assert abs(seq_mean - exact) < 4 * seq_se
    _, _, _, small_se = estimate(250)
    assert 0.25 < tok_se / small_se < 0.5  # about 1/sqrt(8)


def test_token_kl_has_far_lower_variance_than_the_sequence_estimate_for_close_models():
    """A trained policy sits near its reference: there each position's full distribution beats one draw."""
    policy, reference = tiny_lm(4, vocab=64, sharpness=3), tiny_lm(4, vocab=64, sharpness=3)
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    n = 400
    prompts = [[1 + i % 7, 2, 3] for i in range(n)]
    samples = generate(policy, TOKENS, prompts, [sample_seed(1, i) for i in range(n)], max_new_tokens=24,
                       temperature=1.0, top_p=1.0, batch_size=100)  # fmt: skip
    ratio, token_kl = kl_along_samples(policy, lambda: nullcontext(reference), prompts, samples, PAD, 100)
    assert token_kl.mean() > 0
    assert abs(ratio.mean() - token_kl.mean()) < 4 * ratio.std(ddof=1) / math.sqrt(n)  # the same KL
    assert token_kl.std() < 0.3 * ratio.std()  # here about 6 times lower


def test_token_kl_is_zero_for_identical_models_and_a_lora_reference_is_its_base(tmp_path):
    from peft import LoraConfig, get_peft_model

    from thumbs.models import adapter_disabled

    policy = tiny_lm(3, vocab=40)
    twin = tiny_lm(3, vocab=40)
    prompts = [[1, 2, 3], [5, 6], [1, 2, 3], [9]]
    kept: list = []
    samples = generate(policy, TOKENS, prompts, [sample_seed(0, i) for i in range(4)], max_new_tokens=6,
                       temperature=1.0, top_p=1.0, batch_size=4, hidden_out=kept)  # fmt: skip
    ratio, token_kl = kl_along_samples(policy, lambda: nullcontext(twin), prompts, samples, PAD, 3)
    assert np.abs(ratio).max() < 1e-12 and np.abs(token_kl).max() < 1e-12
    # Sampling's own hidden states stand in for the policy's pass: the same numbers.
    assert [h.shape[0] for h in kept] == [len(s) for s in samples]
    reused = kl_along_samples(policy, lambda: nullcontext(twin), prompts, samples, PAD, 3, policy_hidden=kept)
    assert np.abs(reused[0]).max() < 1e-9 and np.abs(reused[1]).max() < 1e-9
    other = tiny_lm(8, vocab=40)
    fresh = kl_along_samples(policy, lambda: nullcontext(other), prompts, samples, PAD, 4)
    reused = kl_along_samples(
        policy, lambda: nullcontext(other), prompts, samples, PAD, 4, policy_hidden=kept
    )
    assert reused[0] == pytest.approx(fresh[0], abs=1e-9) and reused[1] == pytest.approx(fresh[1], abs=1e-9)

    lora = get_peft_model(tiny_lm(3, vocab=40), LoraConfig(r=2, target_modules=["q_proj", "v_proj", "lm_head"],
                                                           init_lora_weights=False))  # fmt: skip
    lora.eval()
    ratio, token_kl = kl_along_samples(lora, lambda: adapter_disabled(lora), prompts, samples, PAD, 4)
    _, expected = kl_along_samples(lora, lambda: nullcontext(twin), prompts, samples, PAD, 4)
    assert token_kl == pytest.approx(expected, abs=1e-10) and (token_kl > 0).all()


# ---- the paired reward interval -------------------------------------------------------------------


def test_t_quantile_matches_the_table():
    for df, value in [(1, 12.7062047), (2, 4.3026527), (5, 2.5705818), (10, 2.2281389), (30, 2.0422725),
                      (200, 1.9718962), (1000, 1.9623391)]:  # fmt: skip
        assert t_quantile(0.975, df) == pytest.approx(value, abs=2e-7)
    assert t_quantile(0.025, 10) == pytest.approx(-2.2281389, abs=2e-7)
    assert t_quantile(0.995, 4) == pytest.approx(4.6040949, abs=2e-7)


@pytest.mark.parametrize("n", [12, 128])
def test_paired_interval_covers_the_true_difference_at_its_stated_rate(n):
    """Judge-like scores in [-1, 1], strongly paired; the interval must cover the truth 95% of the time."""
    rng = np.random.default_rng(n)
    draws, covered = 4000, 0
    shared = rng.normal(size=(draws, n))  # what the shared prompt and random stream make common
    policy = np.tanh(shared + 0.3 + 0.4 * rng.normal(size=(draws, n)))
    reference = np.tanh(shared + 0.4 * rng.normal(size=(draws, n)))
    truth = np.mean(  # E[tanh(s + 0.3 + e1) − tanh(s + e2)] by a large independent draw
        np.tanh((s := rng.normal(size=2_000_000)) + 0.3 + 0.4 * rng.normal(size=s.size))
        - np.tanh(s + 0.4 * rng.normal(size=s.size))
    )
    widths = []
    for p, r in zip(policy, reference):
        result = paired_difference(p, r)
        low, high = result["ci"]
        covered += low <= truth <= high
        widths.append(high - low)
    # Binomial sd at 4000 draws is 0.0034; allow about 4 of them.
    assert abs(covered / draws - 0.95) < 0.014, covered / draws
    # Pairing pays: far narrower than two independent means' intervals would be.
    unpaired = 2 * 1.96 * math.sqrt((policy.var(axis=1).mean() + reference.var(axis=1).mean()) / n)
    assert np.mean(widths) < 0.6 * unpaired


def test_paired_difference_by_hand_and_small_n():
    result = paired_difference([1.0, 0.5, 0.2], [0.0, 0.5, 0.4])
    diff = np.array([1.0, 0.0, -0.2])
    se = diff.std(ddof=1) / math.sqrt(3)
    assert result["mean"] == pytest.approx(diff.mean()) and result["stderr"] == pytest.approx(se)
    assert result["ci"] == pytest.approx([diff.mean() - 4.3026527 * se, diff.mean() + 4.3026527 * se])
    assert paired_difference([1.0], [0.0]) == {"mean": 1.0, "stderr": None, "ci": [None, None], "n": 1}


# ---- the sampler: the same picks as transformers' generate ----------------------------------------


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_own_decode_loop_picks_what_generate_picks(tmp_path, temperature, top_p):
    """The samples for given seeds are those of the old generate + InverseCDFSampler path."""
    from thumbs.models import load_model, load_tokenizer, save_tiny
    from thumbs.tokenize import Encoder

    save_tiny(tmp_path / "m", seed=5)
    model, tokenizer = load_model(str(tmp_path / "m")).eval(), load_tokenizer(str(tmp_path / "m"))
    encoder = Encoder(tokenizer, max_length=128)
    texts = ["Review the movie:", "Say something kind about the weather today.", "Hi"]
    prompts = [encoder.prompt_ids(texts[i % 3]) for i in range(10)]  # repeated prompts share a prefill
    seeds = [sample_seed(3, i) for i in range(10)]
    settings = dict(max_new_tokens=16, temperature=temperature, top_p=top_p)
    expected = transformers_generate(model, tokenizer, prompts, seeds, batch_size=4, **settings)
    assert len({tuple(c) for c in expected}) >= 3  # greedy: one per prompt; sampled: more
    for batch_size in (4, 10, 3):
        assert generate(model, tokenizer, prompts, seeds, batch_size=batch_size, **settings) == expected


def test_decode_attention_is_sdpa_and_gives_each_row_the_same_result_in_any_batch():
    """One new token per row: SDPA's value to float rounding, and each row's bits whatever the batch.

    PyTorch's CPU SDPA kernel on two threads rounds a row differently in a batch of 16 and one of
    64 at most widths (33, 36, 39, ...); the plain matmuls here do not, at any width tried."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from thumbs.eval.sampling import decode_attention

    module = SimpleNamespace(num_key_value_groups=3, is_causal=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        for width in (33, 36, 48, 90, 129):
            q, k, v = torch.randn(16, 9, 1, 64), torch.randn(16, 3, width, 64), torch.randn(16, 3, width, 64)
            mask = torch.rand(16, 1, 1, width) > 0.2
            mask[..., -1] = True  # the new token always sees itself
            for m in (None, mask):
                ours, _ = decode_attention(module, q, k, v, m, scaling=0.125)
                theirs, _ = sdpa_attention_forward(module, q, k, v, m, scaling=0.125)
                assert ours.shape == theirs.shape == (16, 1, 9, 64)
                assert torch.allclose(ours, theirs, atol=1e-5)
                for rows in (1, 5, 15):
                    alone, _ = decode_attention(module, q[:rows], k[:rows], v[:rows], None if m is None else m[:rows],
                                                scaling=0.125)  # fmt: skip
                    assert torch.equal(alone, ours[:rows])
    finally:
        torch.set_num_threads(threads)


def test_samples_are_the_same_in_batches_of_any_size_and_the_model_is_given_back(tmp_path):
    from thumbs.models import load_model, load_tokenizer, save_tiny
    from thumbs.tokenize import Encoder

    save_tiny(tmp_path / "m", seed=2)
    model, tokenizer = load_model(str(tmp_path / "m")).eval(), load_tokenizer(str(tmp_path / "m"))
    assert model.config._attn_implementation == "sdpa"
    prompt = Encoder(tokenizer, max_length=128).prompt_ids("Review the movie:")
    seeds = [sample_seed(0, i) for i in range(12)]
    settings = dict(max_new_tokens=12, temperature=1.0, top_p=1.0)
    samples = {
        b: generate(model, tokenizer, [prompt] * 12, seeds, batch_size=b, **settings) for b in (12, 5, 1)
    }
    assert samples[12] == samples[5] == samples[1]
    assert len({tuple(s) for s in samples[12]}) > 1
    assert model.config._attn_implementation == "sdpa"  # only while sampling

    class Stop(Exception):
        pass

    class Progress:
        def update(self, n):
            raise Stop

    with pytest.raises(Stop):
        generate(model, tokenizer, [prompt], seeds[:1], batch_size=1, progress=Progress(), **settings)
    assert model.config._attn_implementation == "sdpa"


def test_reserved_cache_layer_holds_what_concatenation_holds():
    from transformers.cache_utils import DynamicCache

    from thumbs.eval.sampling import ReservedLayer, reserve

    torch.manual_seed(0)
    parts = [(torch.randn(2, 3, n, 4), torch.randn(2, 3, n, 4)) for n in (5, 1, 1, 1)]
    cache = DynamicCache()
    cache.update(*parts[0], layer_idx=0)
    reserve(cache, 2)
    layer = cache.layers[0]
    assert isinstance(layer, ReservedLayer)
    for step, (k, v) in enumerate(parts[1:]):  # two fit in the room reserved; the third outgrows it
        keys, values = cache.update(k, v, layer_idx=0)
        assert (keys.data_ptr() == layer.key_buffer.data_ptr()) == (step < 2)  # written in place, not copied
    assert torch.equal(keys, torch.cat([p[0] for p in parts], dim=-2))
    assert torch.equal(values, torch.cat([p[1] for p in parts], dim=-2))
    assert cache.get_seq_length() == 8


# ---- head to head ---------------------------------------------------------------------------------


def test_head_to_head_pairs_two_runs_on_the_same_prompts_and_streams(tmp_path):
    from typer.testing import CliRunner

    from tests.test_eval import make_run, write_events
    from thumbs.cli import app
    from thumbs.eval.evaluation import evaluate
    from thumbs.eval.versus import head_to_head
    from thumbs.models import save_tiny

    save_tiny(tmp_path / "start", seed=0)
    write_events(tmp_path / "events.parquet")
    run_a = make_run(tmp_path, "a", tmp_path / "start", scale=0.1)
    run_b = make_run(tmp_path, "b", tmp_path / "start", lora=True)
    judge_file = tmp_path / "letters.py"
    judge_file.write_text(
        "def letters(prompt, completion):\n    return float(sum(c.isalpha() for c in completion))\n"
    )
    judge = f"python:{judge_file}:letters"
    fast = dict(n=8, max_new_tokens=12, batch_size=4, progress=False, judge=judge)

    own = {side: evaluate(run, **fast) for run, side in ((run_a, "a"), (run_b, "b"))}  # run/eval.json
    result = head_to_head(run_a, run_b, **fast)
    assert result["n"] == 8 and result["wins"] + result["ties"] + result["losses"] == 8
    assert result["prompts"]["distinct"] == 3  # A's eval split
    diff = result["reward_diff"]
    assert diff["mean"] == pytest.approx(result["reward"]["a"]["mean"] - result["reward"]["b"]["mean"])
    assert diff["ci"][0] <= diff["mean"] <= diff["ci"][1] and diff["n"] == 8
    assert json.loads((run_a / "versus-b.json").read_text())["win_rate"] == result["win_rate"]
    # The same prompts and streams as each run's own eval: A's and B's samples are their eval samples.
    for side in ("a", "b"):
        assert [s[side] for s in result["samples"]] == [s["policy"] for s in own[side]["samples"]]
        assert result["kl_tokens"][side] == own[side]["kl_tokens"]  # context for matched KL

    same = head_to_head(run_a, run_a, out=tmp_path / "same.json", **fast)
    assert same["ties"] == 8 and same["win_rate"] == 0.5 and same["reward_diff"]["mean"] == 0

    cli = CliRunner().invoke(
        app,
        ["eval", str(run_b), "--against", str(run_a), "--n", "4", "--max-new-tokens", "6", "--judge", judge],
    )
    assert cli.exit_code == 0, cli.output
    assert json.loads((run_b / "versus-a.json").read_text())["n"] == 4
    refused = CliRunner().invoke(app, ["eval", str(run_b), "--against", str(run_a), "--reference", "x"])
    assert refused.exit_code == 2 and "--against" in refused.output


@pytest.mark.parametrize("family", ["llama", "gemma2", "granite", "cohere"])
def test_head_logits_finish_as_the_models_own_forward(family):
    """Families that rescale or cap their logits after the head: the decode loop must do the same."""
    import transformers

    shape = dict(vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=8)  # fmt: skip
    extra = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"final_logit_softcapping": 0.5}),
        "granite": ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 4.0}),
        "cohere": ("CohereConfig", "CohereForCausalLM", {"logit_scale": 3.0}),
    }[family]
    torch.manual_seed(0)
    config = getattr(transformers, extra[0])(**shape, **extra[2])
    model = getattr(transformers, extra[1])(config).eval()
    from thumbs.eval.sampling import head_logits

    ids = torch.tensor([[3, 5, 7, 9]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits[0]
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state[0]
        assert head_logits(model, hidden) == pytest.approx(expected, abs=1e-5)
    samples = generate(model, SimpleNamespace(eos_token_id=1, pad_token_id=0), [[3, 5], [7]], [1, 2],
                       max_new_tokens=5, temperature=1.0, top_p=1.0, batch_size=2)  # fmt: skip
    oracle = transformers_generate(model, SimpleNamespace(eos_token_id=1, pad_token_id=0), [[3, 5], [7]], [1, 2],
                                   max_new_tokens=5, temperature=1.0, top_p=1.0, batch_size=2)  # fmt: skip
    assert samples == oracle
