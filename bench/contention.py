"""thumbs on a busy machine: a KTO step and the reference pass, idle and beside one busy process.

    python bench/contention.py [--quick] [--json] [--steps N] [--pairs K]

Each run is its own subprocess: with PyTorch's own thread count (``THUMBS_THREADS=fixed``: one
thread per core, what thumbs did before) or with thumbs' governor (``thumbs.cores``: threads for
the cores that are free), on an idle machine or beside one single-threaded busy process (a Python
spin loop, started before and stopped after).

The work is the demo's shape: LoRA (r=16) on a SmolLM2-135M-shaped Llama with random weights
(``--quick``: a 4-layer model with the same vocabulary), 64 KTO examples of 40-120 tokens, the
reference pass over them and their KL sequences, then optimizer steps of 8 examples plus their 8
KL sequences. Reported per run: reference pass seconds, and seconds per optimizer step (the mean
over the steps after the first: every run takes the same batches, so this is their total time).

This machine's speed drifts by up to ~10% over minutes, more than the margin the target leaves, so
runs are taken in idle/busy pairs, one straight after the other, and each slowdown busy/idle is a
pair's own. The governor's pairs are repeated ``--pairs`` times (default 2, alternating idle and
busy) and every pair is printed with the median; PyTorch's fixed threads, the "before", run one
pair. The issue's target is the governed slowdown (≤ 2.2×); the idle ratio governed/fixed must
stay at 1 (the governor must not slow the idle case). Run it on an otherwise idle machine:
anything else running falsifies "idle".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)  # fmt: skip
QUICK_MODEL = dict(SMOLLM2_135M, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                   num_attention_heads=3, num_key_value_heads=1)  # fmt: skip
WORDS = [
    "the",
    "film",
    "was",
    "a",
    "quiet",
    "warm",
    "funny",
    "sharp",
    "dull",
    "long",
    "slow",
    "bright",
    "odd",
    "story",
    "cast",
    "score",
    "plot",
    "ending",
]


def make_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = ""
        target = rng.randint(40, 120)
        while len(text) < target:
            text += rng.choice(WORDS) + " "
        rows.append({"prompt": [{"role": "user", "content": "Write a one-sentence movie review."}],
                     "completion": text.strip().capitalize() + ".", "label": i % 2 == 0})  # fmt: skip
    return rows


def worker(spec: dict) -> dict:
    from thumbs.config import load_config
    from thumbs.models import save_tiny
    from thumbs.train import loop, reference

    work = Path(spec["work"])
    os.environ["THUMBS_CACHE"] = str(work / "cache")  # the reference pass runs every time
    model = save_tiny(work / "model", seed=0, **spec["model"])
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(64, 0)))
    timings: dict = {"steps": []}
    compute = reference.compute_reference_logps
    step = loop.train_step

    def timed_reference(*args, **kwargs):
        t0 = time.perf_counter()
        out = compute(*args, **kwargs)
        timings["reference"] = time.perf_counter() - t0
        return out

    def timed_step(*args, **kwargs):
        import torch

        t0 = time.perf_counter()
        step(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        timings["steps"].append(time.perf_counter() - t0)

    reference.compute_reference_logps = timed_reference
    loop.train_step = timed_step
    sets = {
        "model.name_or_path": str(model), "model.lora.r": 16, "model.lora.alpha": 32,
        "data.train": str(data), "data.max_length": 128, "train.batch_size": 8,
        "train.max_steps": spec["steps"], "train.learning_rate": 5e-4, "train.warmup_ratio": 0.0,
        "train.precision": "fp32", "train.log_every": 1, "output_dir": str(work / "run"),
    }  # fmt: skip
    loop.train(load_config(None, [f"{k}={json.dumps(v)}" for k, v in sets.items()]))
    import torch

    timings["threads_at_end"] = torch.get_num_threads()
    return timings


def busy_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"])


def launch(spec: dict, *, governed: bool, busy: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "THUMBS_THREADS")}
    if not governed:
        env["THUMBS_THREADS"] = "fixed"
    with tempfile.TemporaryDirectory() as work:
        spec = dict(spec, work=work)
        spinner = busy_process() if busy else None
        try:
            if spinner:
                time.sleep(1.0)
            out = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
        finally:
            if spinner:
                spinner.kill()
                spinner.wait()
    if out.returncode != 0:
        raise SystemExit(
            f"worker failed ({'governed' if governed else 'fixed'}, busy={busy}):\n{out.stderr[-3000:]}"
        )
    timings = json.loads(out.stdout.strip().splitlines()[-1])
    steps = timings["steps"][1:] or timings["steps"]
    return {"reference_s": timings["reference"], "step_s": statistics.fmean(steps),
            "steps_s": timings["steps"], "threads_at_end": timings["threads_at_end"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=2, help="idle/busy pairs with the governor")
    parser.add_argument(
        "--once", action="store_true", help="one run as the machine is (bench/gpu.sh: on the GPU)"
    )
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.pairs < 1 or args.steps < 1:
        parser.error("--pairs and --steps must be at least 1")
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    spec = {"model": QUICK_MODEL if args.quick else SMOLLM2_135M, "steps": args.steps}
    if args.once:
        with tempfile.TemporaryDirectory() as work:
            timings = worker(dict(spec, work=work))
        steps = timings["steps"][1:] or timings["steps"]
        print(f"reference pass {timings['reference']:.2f} s; mean step {statistics.fmean(steps):.3f} s "
              f"({len(steps)} steps after the first)")  # fmt: skip
        return
    measures = ("reference", "step")  # each run's "<measure>_s"
    pairs = []  # {"policy", "idle": run, "busy": run, "<measure> slowdown"}, each pair taken back to back
    for policy, count in (("fixed", 1), ("governed", args.pairs)):
        for k in range(count):
            runs = {}
            for busy in (False, True) if k % 2 == 0 else (True, False):  # drift cancels over pairs
                runs[busy] = launch(spec, governed=policy == "governed", busy=busy)
                name = f"{policy}/{'busy' if busy else 'idle'}"
                print(f"{name:15s} reference {runs[busy]['reference_s']:7.2f} s   step {runs[busy]['step_s']:6.2f} s"
                      f"   threads at end {runs[busy]['threads_at_end']}", flush=True)  # fmt: skip
            pairs.append({"policy": policy, "idle": runs[False], "busy": runs[True],
                          **{f"{what} slowdown": runs[True][f"{what}_s"] / runs[False][f"{what}_s"]
                             for what in measures}})  # fmt: skip
            print(f"{'':15s} slowdown busy/idle: reference {pairs[-1]['reference slowdown']:.2f}x, "
                  f"step {pairs[-1]['step slowdown']:.2f}x", flush=True)  # fmt: skip
    ratios = {}
    for policy in ("fixed", "governed"):
        mine = [p for p in pairs if p["policy"] == policy]
        for what in measures:
            ratios[f"{policy} {what} slowdown busy/idle"] = statistics.median(
                p[f"{what} slowdown"] for p in mine
            )
    fixed_idle = next(p["idle"] for p in pairs if p["policy"] == "fixed")
    for what in measures:
        governed_idle = statistics.median(p["idle"][f"{what}_s"] for p in pairs if p["policy"] == "governed")
        ratios[f"idle {what} governed/fixed"] = governed_idle / fixed_idle[f"{what}_s"]
    print(f"median over pairs ({args.pairs} governed, 1 fixed):")
    for key, value in ratios.items():
        print(f"  {key:40s} {value:5.2f}x")
    if args.json:
        print(json.dumps({"pairs": pairs, "ratios": ratios, "cores": os.cpu_count(), "steps": args.steps,
                          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}))  # fmt: skip


if __name__ == "__main__":
    main()
