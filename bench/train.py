"""thumbs against TRL on the same preference-training work: tokens/s, peak memory, MFU, same loss.

    python bench/train.py [--quick] [--json] [--methods kto,dpo] [--lora] [--uncheckpointed N]

One invocation runs, for each method, thumbs and then TRL, each in its own subprocess (so peak
resident memory is per tool), on the same model (a SmolLM2-135M-shaped Llama built from a config
with random weights; ``--quick``: a small Llama with the same 49,152-token vocabulary), the same
data, batch order, effective batch, max length, steps, optimizer and precision (fp32 on CPU).

What is held equal, and how:
- Tokenizer: thumbs' byte-level tokenizer (259 tokens) with the model's ``vocab_size`` set to
  49,152, so the LM head and its log-softmax cost what SmolLM2's do; one character is one token,
  so a completion of 20-400 characters is 20-400 tokens.
- Batches: TRL's KTO needs sequential sampling (it pairs KL completions inside a batch), so TRL
  gets the dataset in the order thumbs' seeded shuffle visits it, and thumbs' KL partners are set to
  TRL's rotation (example k's KL completion is example k-1's, within the microbatch). Both tools
  then see the same microbatches and the same KL sequences.
- Optimizer: AdamW, constant learning rate, no warm-up, no weight decay, gradient clipping at 1.0;
  reference log-probs precomputed once by both (not timed).
- Activation (gradient) checkpointing: on for both by default, as TRL 1.16's configs default
  to it; ``--no-checkpointing`` turns it off for both. (Left unequal, the tool without it spends
  about twice the memory and saves about a sixth of the time.) thumbs then runs once more with its
  last 8 layers (``--quick``: 1) left out of checkpointing (``model.uncheckpointed_layers``;
  ``--uncheckpointed N``, 0 skips it), reported apart as ``uncheckpointed``: the same job, with
  some of the memory thumbs saves against TRL spent on not recomputing.

Measured, per tool:
- tokens/s: prompt + completion tokens of the real (non-padding) sequences that get gradients
  (KTO: the example; DPO: chosen and rejected), per optimizer step, over the wall time between
  consecutive optimizer steps; the median over the steps after the first (warm-up). The tokens are
  the job's, the same for both tools: as TRL's decoder sees them, every sequence whole. (thumbs
  computes a prompt that DPO's chosen and rejected share once, and KTO's KL sequences continue the
  examples' prompts, so its decoder sees fewer tokens for the same steps; those counts are printed
  as ``computed_tokens_per_step``.) So the speedup is the ratio of the two tools' step times.
- peak memory: VmHWM of the tool's process.
- MFU: model FLOPs per step / step time / the fp32 matmul throughput the same process measures.
  Model FLOPs = 6·N·(trained tokens) + 2·N·(no-grad tokens: KTO's KL pass, whole), N = all parameters
  (the tied embedding counted once, as the LM head); attention's T² term is left out. The same
  formula for both tools, so MFU(thumbs)/MFU(TRL) is the speedup over the matmul peak ratio.
- same_loss: the logged loss of step 1 and of step 2 agree to 1e-4 (relative). At step 1 the
  policy equals the reference, so that loss is fixed by the method (KTO 0.5, DPO log 2); step 2
  follows one optimizer update on the same batch, so it also checks both computed the same
  gradients. Both steps are reported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    tie_word_embeddings=True,
)
QUICK_MODEL = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=49152,
    tie_word_embeddings=True,
)
# examples = batch_size x grad_accum x steps: every example is trained on once (one epoch)
# learning rate: large enough that step 2's loss moves measurably, small enough not to diverge
# (at 1e-3 the 135M model's KL reached hundreds of nats and fp32 on CPU slowed several-fold)
# uncheckpointed: the layers thumbs' second run leaves out of checkpointing (model.uncheckpointed_layers)
FULL = dict(model=SMOLLM2_135M, batch_size=4, grad_accum=1, steps=5, max_length=512, learning_rate=1e-5,
            uncheckpointed=8)  # fmt: skip
QUICK = dict(model=QUICK_MODEL, batch_size=4, grad_accum=1, steps=6, max_length=512, learning_rate=1e-3,
             uncheckpointed=1)  # fmt: skip
SETTINGS = dict(seed=0, max_grad_norm=1.0, beta=0.1, ref_batch_size=8)
TOLERANCE = 1e-4

WORDS = [
    "the",
    "a",
    "film",
    "plot",
    "actors",
    "scenes",
    "music",
    "camera",
    "story",
    "ending",
    "was",
    "were",
    "is",
    "quite",
    "very",
    "rather",
    "not",
    "slow",
    "fast",
    "funny",
    "dull",
    "bright",
    "dark",
    "warm",
    "cold",
    "long",
    "short",
    "kind",
    "of",
    "and",
    "but",
    "so",
    "then",
    "with",
    "without",
    "every",
    "moment",
    "felt",
    "like",
    "an",
    "hour",
    "minute",
    "this",
    "that",
    "review",
    "meal",
    "service",
    "hotel",
    "room",
    "song",
]


# ---- data: the same for both tools ---------------------------------------------------------------


def _text(rng: random.Random, n_chars: int) -> str:
    words = []
    while sum(len(w) + 1 for w in words) < n_chars:
        words.append(rng.choice(WORDS))
    return " ".join(words)[:n_chars]


def _completion_length(rng: random.Random) -> int:
    return int(round(math.exp(rng.uniform(math.log(20), math.log(400)))))  # log-uniform 20-400


def make_data(method: str, n: int, seed: int) -> list[dict]:
    """Plain-text prompts of 10-100 tokens, completions of 20-400 (log-uniform), labels independent of length."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = _text(rng, rng.randint(10, 100)) + ":"
        if method == "kto":
            rows.append(
                {
                    "prompt": prompt,
                    "completion": _text(rng, _completion_length(rng)),
                    "label": rng.random() < 0.5,
                }
            )
        else:
            chosen, rejected = _text(rng, _completion_length(rng)), _text(rng, _completion_length(rng))
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def thumbs_order(n: int, micro: int, seed: int) -> list[list[int]]:
    """The microbatches thumbs' seeded shuffle visits in epoch 0 (length grouping off)."""
    from thumbs.train.batches import epoch_microbatches

    return epoch_microbatches([0] * n, micro, epoch=0, seed=seed, group=False)


# ---- measurement hooks, installed the same way in both workers -----------------------------------


class Meter:
    """Counts real tokens the decoder sees (with / without gradient) and stamps every optimizer step."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.grad_tokens = self.nograd_tokens = 0
        self.steps: list[dict] = []

    def install(self):
        import torch
        from transformers.models.llama.modeling_llama import LlamaModel

        original = LlamaModel.forward
        meter = self

        def counted(module, input_ids=None, *args, **kwargs):
            if input_ids is not None:
                real = int((input_ids != meter.pad_id).sum())
                if torch.is_grad_enabled():
                    meter.grad_tokens += real
                else:
                    meter.nograd_tokens += real
            return original(module, input_ids, *args, **kwargs)

        LlamaModel.forward = counted

        def stamp(optimizer, args, kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # time the step's kernels, not their launch
            meter.steps.append(
                {
                    "t": time.perf_counter(),
                    "grad_tokens": meter.grad_tokens,
                    "nograd_tokens": meter.nograd_tokens,
                    "peak_rss_mib": peak_rss_mib(),
                }
            )
            meter.grad_tokens = meter.nograd_tokens = 0

        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(stamp)


def matmul_flops(size: int, repeats: int, gpu: bool = False) -> float:
    """matmul throughput of this process (FLOP/s), best of ``repeats``: fp32 on a CPU, bf16 on a GPU."""
    import torch

    device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
    a, b = (
        torch.randn(size, size, device=device, dtype=dtype),
        torch.randn(size, size, device=device, dtype=dtype),
    )
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        if gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.matmul(a, b)
        if gpu:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- workers -------------------------------------------------------------------------------------


def run_thumbs(spec: dict, work: Path) -> list[float]:
    import thumbs.train.methods
    from thumbs.config import load_config
    from thumbs.train.loop import train

    rows, order = spec["rows"], spec["order"]
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if spec["method"] == "kto":  # TRL's KL pairing: within each microbatch, the previous example's completion
        partner = list(range(len(rows)))
        for batch in order:
            for k, i in enumerate(batch):
                partner[i] = batch[k - 1]
        thumbs.train.methods.kl_partners = lambda prompts, completions, seed: partner
    sets = {
        "method": spec["method"],
        "output_dir": str(work / "run"),
        "model.name_or_path": spec["model_path"],
        "model.lora.enabled": spec["lora"],
        "data.train": str(data),
        "data.max_length": spec["max_length"],
        "train.batch_size": spec["batch_size"],
        "train.grad_accum": spec["grad_accum"],
        "train.max_steps": spec["steps"],
        "train.learning_rate": spec["learning_rate"],
        "train.schedule": "constant",
        "train.warmup_ratio": 0.0,
        "train.max_grad_norm": SETTINGS["max_grad_norm"],
        "train.precision": "bf16" if spec.get("gpu") else "fp32",
        "model.gradient_checkpointing": spec["gradient_checkpointing"],
        "train.seed": SETTINGS["seed"],
        "train.ref_batch_size": SETTINGS["ref_batch_size"],
        f"{spec['method']}.beta": SETTINGS["beta"],
    }
    sets.update(spec.get("thumbs_options", {}))
    cfg = load_config(None, [f"{k}={json.dumps(v)}" for k, v in sets.items()])
    os.environ["THUMBS_CACHE"] = str(work / "cache")  # no reference log-probs from an earlier run
    run = train(cfg)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records]


def run_trl(spec: dict, work: Path) -> list[float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback

    from thumbs.models import load_tokenizer

    rows = [spec["rows"][i] for batch in spec["order"] for i in batch]  # thumbs' visiting order
    tokenizer = load_tokenizer(spec["model_path"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_path"], attn_implementation="sdpa")
    common = dict(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=spec["grad_accum"],
        max_steps=spec["steps"],
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=SETTINGS["max_grad_norm"],
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=not spec.get("gpu"),
        bf16=bool(spec.get("gpu")),
        fp16=False,
        gradient_checkpointing=spec["gradient_checkpointing"],
        gradient_checkpointing_kwargs={"use_reentrant": False},
        seed=SETTINGS["seed"],
        data_seed=SETTINGS["seed"],
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        disable_tqdm=True,
        beta=SETTINGS["beta"],
        max_length=spec["max_length"],
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=SETTINGS["ref_batch_size"],
    )
    peft_config = None
    if spec["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    if spec["method"] == "kto":
        from trl import KTOConfig, KTOTrainer

        trainer = KTOTrainer(
            model=model, args=KTOConfig(**common), train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer, peft_config=peft_config, callbacks=[Losses()],
        )  # fmt: skip
    else:
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(
            model=model, args=DPOConfig(**common), train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer, peft_config=peft_config, callbacks=[Losses()],
        )  # fmt: skip
    trainer.train()
    return losses


def worker(tool: str, spec_path: Path) -> None:
    import torch

    spec = json.loads(spec_path.read_text())
    torch.manual_seed(SETTINGS["seed"])
    peak = matmul_flops(*spec["matmul"], gpu=spec.get("gpu", False))
    from thumbs.models import load_tokenizer

    meter = Meter(load_tokenizer(spec["model_path"]).pad_token_id)
    meter.install()
    with tempfile.TemporaryDirectory(prefix=f"bench-{tool}-") as tmp:
        losses = (run_thumbs if tool == "thumbs" else run_trl)(spec, Path(tmp))
    steps = []
    for before, after in zip(meter.steps, meter.steps[1:]):
        steps.append(
            {
                "seconds": after["t"] - before["t"],
                "grad_tokens": after["grad_tokens"],
                "nograd_tokens": after["nograd_tokens"],
            }
        )
    peak = max(
        peak, matmul_flops(*spec["matmul"], gpu=spec.get("gpu", False))
    )  # the better of before and after
    result = {
        "tool": tool,
        "losses": losses,
        "steps": steps,
        "matmul_flops": peak,
        # on a GPU the memory that matters is the device's: its allocator's high-water mark
        "peak_rss_mib": torch.cuda.max_memory_allocated() / 2**20 if spec.get("gpu") else peak_rss_mib(),
        "peak_rss_mib_by_step": [s["peak_rss_mib"] for s in meter.steps],
    }
    print("BENCH-RESULT " + json.dumps(result), flush=True)


# ---- the comparison ------------------------------------------------------------------------------


def summarise(result: dict, n_params: int, job: list[dict]) -> dict:
    """One tool's figures; ``job``: per timed step, the tokens the step's work is counted as
    (``grad_tokens``, ``nograd_tokens``), the same for both tools."""
    steps = result["steps"]  # the first optimizer step (warm-up) has no start stamp: already left out
    if len(steps) != len(job):
        raise SystemExit(f"bench: {result['tool']} timed {len(steps)} steps, the job has {len(job)}")
    tps = statistics.median(w["grad_tokens"] / s["seconds"] for s, w in zip(steps, job))
    flops = statistics.median(
        (6 * n_params * w["grad_tokens"] + 2 * n_params * w["nograd_tokens"]) / s["seconds"]
        for s, w in zip(steps, job)
    )
    return {
        "tokens_per_s": tps,
        "model_flops_per_s": flops,
        "mfu": flops / result["matmul_flops"],
        "matmul_gflops": result["matmul_flops"] / 1e9,
        "peak_rss_mib": result["peak_rss_mib"],
        "losses": result["losses"],
        "timed_steps": len(steps),
        "tokens_per_step": statistics.median(w["grad_tokens"] for w in job),
        "computed_tokens_per_step": {
            "grad": statistics.median(s["grad_tokens"] for s in steps),
            "nograd": statistics.median(s["nograd_tokens"] for s in steps),
        },
    }


def close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * max(1.0, abs(a), abs(b))


def launch(tool: str, spec: dict, work: Path, log, label: str = "") -> dict:
    spec_path = work / f"{spec['method']}-{tool}{label}.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    if not spec.get("gpu"):
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU comparison stays on the CPU for both tools
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", tool, "--spec", str(spec_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    log(f"  {spec['method']} {tool}{label}: {time.perf_counter() - started:.0f}s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH-RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"bench: the {tool} worker for {spec['method']} failed (exit {proc.returncode})")
    return json.loads(lines[-1].removeprefix("BENCH-RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small model: minutes, not tens of minutes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--methods", default="kto,dpo")
    parser.add_argument("--lora", action="store_true", help="LoRA (r=16, all linear layers) instead of full")
    parser.add_argument(
        "--no-checkpointing", action="store_true", help="activation checkpointing off for both tools"
    )
    parser.add_argument(
        "--set", action="append", default=[], help="thumbs option, e.g. train.group_by_length=true"
    )
    parser.add_argument(
        "--gpu", action="store_true", help="on CUDA in bf16 (both tools); memory = device peak"
    )
    parser.add_argument(
        "--uncheckpointed",
        type=int,
        help="layers thumbs' second run leaves out of checkpointing (default 8, --quick 1; 0: no second run)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, Path(args.spec))

    from thumbs.models import save_tiny

    preset = QUICK if args.quick else FULL
    examples = preset["batch_size"] * preset["grad_accum"] * preset["steps"]
    kept = (
        0
        if args.no_checkpointing
        else preset["uncheckpointed"]
        if args.uncheckpointed is None
        else args.uncheckpointed
    )
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        model_path = save_tiny(work / "model", seed=SETTINGS["seed"], **preset["model"])
        from transformers import AutoConfig, AutoModelForCausalLM

        n_params = sum(
            p.numel()
            for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path)).parameters()
        )
        log(f"bench: {'quick' if args.quick else 'full'} model, {n_params / 1e6:.1f}M parameters")
        for method in args.methods.split(","):
            rows = make_data(method, examples, SETTINGS["seed"])
            order = thumbs_order(len(rows), preset["batch_size"], SETTINGS["seed"])
            spec = {
                "method": method,
                "rows": rows,
                "order": order,
                "model_path": str(model_path),
                "lora": args.lora,
                "gradient_checkpointing": not args.no_checkpointing,
                "matmul": [1024, 10] if args.quick else [2048 * (4 if args.gpu else 1), 5],
                "gpu": args.gpu,
                "thumbs_options": {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)},
                **{
                    k: preset[k] for k in ("batch_size", "grad_accum", "steps", "max_length", "learning_rate")
                },
            }
            runs = {tool: launch(tool, spec, work, log) for tool in ("thumbs", "trl")}
            if kept:  # the same job, the memory left under TRL's spent on not recomputing some layers
                options = {**spec["thumbs_options"], "model.uncheckpointed_layers": kept}
                label = f" (last {kept} layer{'s' * (kept > 1)} uncheckpointed)"
                runs["kept"] = launch("thumbs", {**spec, "thumbs_options": options}, work, log, label)
            # TRL computes every sequence whole: its decoder's tokens are the job's
            job = runs["trl"]["steps"]
            ours, theirs = (summarise(runs[tool], n_params, job) for tool in ("thumbs", "trl"))
            first = [ours["losses"][0], theirs["losses"][0]]
            second = [ours["losses"][1], theirs["losses"][1]]
            out[method] = {
                "speedup": ours["tokens_per_s"] / theirs["tokens_per_s"],
                "memory_ratio": ours["peak_rss_mib"] / theirs["peak_rss_mib"],
                "mfu": {"thumbs": ours["mfu"], "trl": theirs["mfu"]},
                "same_loss": close(*first) and close(*second),
                "loss_step1": {"thumbs": first[0], "trl": first[1]},
                "loss_step2": {"thumbs": second[0], "trl": second[1]},
                "tokens_per_s": {"thumbs": ours["tokens_per_s"], "trl": theirs["tokens_per_s"]},
                "peak_rss_mib": {"thumbs": ours["peak_rss_mib"], "trl": theirs["peak_rss_mib"]},
                "matmul_gflops": {"thumbs": ours["matmul_gflops"], "trl": theirs["matmul_gflops"]},
                "timed_steps": ours["timed_steps"],
                "tokens_per_step": ours["tokens_per_step"],
                "computed_tokens_per_step": {
                    "thumbs": ours["computed_tokens_per_step"],
                    "trl": theirs["computed_tokens_per_step"],
                },
            }
            if kept:
                alt = summarise(runs["kept"], n_params, job)
                out[method]["uncheckpointed"] = {
                    "layers": kept,
                    "speedup": alt["tokens_per_s"] / theirs["tokens_per_s"],
                    "memory_ratio": alt["peak_rss_mib"] / theirs["peak_rss_mib"],
                    "mfu": alt["mfu"],
                    "same_loss": close(alt["losses"][0], first[1]) and close(alt["losses"][1], second[1]),
                    "tokens_per_s": alt["tokens_per_s"],
                    "peak_rss_mib": alt["peak_rss_mib"],
                }
    meta = {
        "mode": "quick" if args.quick else "full",
        "params": n_params,
        "finetuning": "lora" if args.lora else "full",
        "gradient_checkpointing": not args.no_checkpointing,
        "uncheckpointed_layers": kept,
        "precision": "bf16" if args.gpu else "fp32",
        "device": "cuda" if args.gpu else "cpu",
        "memory": "device peak (max_memory_allocated)" if args.gpu else "VmHWM",
        "threads": __import__("torch").get_num_threads(),
        "examples": examples,
        "batch": f"{preset['batch_size']} x {preset['grad_accum']} accumulation",
        "steps": preset["steps"],
        "max_length": preset["max_length"],
        "learning_rate": preset["learning_rate"],
        "thumbs_options": spec["thumbs_options"],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if args.json:
        print(json.dumps({**out, "meta": meta}))
        return
    print(json.dumps(meta))
    for method, r in out.items():
        print(
            f"{method}: speedup {r['speedup']:.2f}x  memory {r['memory_ratio']:.2f}x  "
            f"MFU thumbs {r['mfu']['thumbs']:.1%} TRL {r['mfu']['trl']:.1%}  same_loss {r['same_loss']} "
            f"(step 1 {r['loss_step1']['thumbs']:.6f}/{r['loss_step1']['trl']:.6f}, "
            f"step 2 {r['loss_step2']['thumbs']:.6f}/{r['loss_step2']['trl']:.6f})  "
            f"tokens/s {r['tokens_per_s']['thumbs']:.0f}/{r['tokens_per_s']['trl']:.0f}  "
            f"peak MiB {r['peak_rss_mib']['thumbs']:.0f}/{r['peak_rss_mib']['trl']:.0f}"
        )
        if "uncheckpointed" in r:
            u = r["uncheckpointed"]
            print(
                f"{method}, last {u['layers']} layers uncheckpointed: speedup {u['speedup']:.2f}x  "
                f"memory {u['memory_ratio']:.2f}x  MFU {u['mfu']:.1%}  same_loss {u['same_loss']}  "
                f"tokens/s {u['tokens_per_s']:.0f}  peak MiB {u['peak_rss_mib']:.0f}"
            )


if __name__ == "__main__":
    main()
