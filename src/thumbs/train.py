"""One training loop for every method (KTO, DPO, SFT): setup, loop, save.

A method (``thumbs.methods``) says which sequences an example needs and how its loss reads their
log-probs; everything else is here and shared: data, reference log-probs, LoRA or full, Accelerate,
accumulation, clipping, schedule, checkpoint/resume, metrics.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path

import typer

from thumbs.config import Config, load_config
from thumbs.errors import ThumbsError


def _precision(cfg: Config) -> str:
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
    from thumbs.pairing import feedback_from_pairs, pairs_from_feedback

    table = load_examples(cfg.data.train, split="train")
    paired = "chosen" in table.column_names
    summary: dict = {"source_rows": table.num_rows, "paired_input": paired}
    if cfg.data.limit:  # a seeded sample, never the head of a file ordered by label
        order = list(range(table.num_rows))
        random.Random(cfg.train.seed).shuffle(order)
        table = table.take(sorted(order[: cfg.data.limit]))
    if not paired:
        from thumbs.data.weighting import apply_feedback_options

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
    if cfg.method in ("kto", "sft"):
        n_desirable = pc.sum(table["label"]).as_py() or 0
        summary["desirable"], summary["undesirable"] = n_desirable, table.num_rows - n_desirable
    summary["examples"] = table.num_rows
    if table.num_rows == 0:
        raise ThumbsError("no training examples left", hint="check data.train and the data options")
    return table, summary


def class_weights(cfg: Config, summary: dict, say=print) -> None:
    """Resolve ``auto`` KTO class weights by the paper's rule from the class counts (logged with ``say``)."""
    if cfg.method != "kto":
        return
    n_d, n_u = summary["desirable"], summary["undesirable"]
    auto = [k for k in ("desirable_weight", "undesirable_weight") if getattr(cfg.kto, k) == "auto"]
    if auto and (n_d == 0 or n_u == 0):
        empty = "thumbs-up" if n_d == 0 else "thumbs-down"
        raise ThumbsError(
            f"class weights are 'auto' but the data has no {empty} examples ({n_d} up, {n_u} down)",
            hint="give numeric kto.desirable_weight / kto.undesirable_weight, or add examples of both classes",
        )
    if auto:
        from thumbs.data.weighting import recommended_class_weights

        lam_d, lam_u = recommended_class_weights(n_d, n_u, cfg.data.deployment_positive_rate)
        # one weight given: keep the recommended ratio λ_D/λ_U, scaled by the given weight
        if auto == ["desirable_weight"]:
            lam_d, lam_u = cfg.kto.undesirable_weight * lam_d / lam_u, cfg.kto.undesirable_weight
        elif auto == ["undesirable_weight"]:
            lam_d, lam_u = cfg.kto.desirable_weight, cfg.kto.desirable_weight * lam_u / lam_d
        cfg.kto.desirable_weight, cfg.kto.undesirable_weight = lam_d, lam_u
    summary["class_weights"] = {
        "desirable": cfg.kto.desirable_weight,
        "undesirable": cfg.kto.undesirable_weight,
    }
    if n_d and n_u:
        ratio = cfg.kto.desirable_weight * n_d / (cfg.kto.undesirable_weight * n_u)
        summary["class_weights"]["weighted_ratio"] = ratio
        if not 1 <= ratio <= 4 / 3:
            say(
                f"thumbs: note: λ_D·n_D/(λ_U·n_U) = {ratio:.2f}, outside the paper's [1, 4/3]; see `thumbs audit`"
            )


def epoch_microbatches(lengths: list[int], size: int, epoch: int, seed: int, group: bool) -> list[list[int]]:
    """The global microbatches of one epoch: a seeded shuffle, then (optionally) similar lengths
    grouped inside windows of 32 microbatches, whose order is shuffled again. Never ordered by label.
    A final partial microbatch is dropped (the next epoch reshuffles, so nothing is always left out).
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group:
        window = size * 32
        order = [
            i
            for s in range(0, len(order), window)
            for i in sorted(order[s : s + window], key=lengths.__getitem__)
        ]
    batches = [order[s : s + size] for s in range(0, len(order) - size + 1, size)]
    if group:
        rng.shuffle(batches)
    return batches


def _check_sharding(accelerator) -> None:
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


def build_model(cfg: Config, source: str):
    """The model to train: the base model, with a fresh LoRA adapter when ``model.lora.enabled``."""
    from thumbs.models import load_model

    model = load_model(source)
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


def _adamw(params: list, cfg: Config):
    """AdamW, the fused kernel where the device has one: one pass over each tensor instead of a
    chain of foreach ops with their temporaries (on the 135M bench shape, CPU: 0.07 s a step against
    0.23 s). Same update to float rounding."""
    import torch

    kwargs = dict(lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(params, **kwargs)


def train(cfg: Config, *, resume: bool = False) -> Path:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from thumbs.checkpoint import load_checkpoint, save_checkpoint
    from thumbs.logprobs import CompletionLogps
    from thumbs.methods import METHODS, build_items
    from thumbs.models import load_tokenizer
    from thumbs.reference import reference_logps
    from thumbs.tokenize import Encoder, collate, pack

    # under torchrun on a machine without GPUs Accelerate needs cpu=True, else each rank trains alone
    spread = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=_precision(cfg), cpu=spread)
    main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    sharded = accelerator.distributed_type.value
    _check_sharding(accelerator)
    run_dir = Path(cfg.output_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    if not resume and (run_dir / "final").exists():
        raise ThumbsError(
            "the output folder already holds a finished run",
            file=str(run_dir),
            hint="pass --resume or another --output-dir",
        )
    set_seed(cfg.train.seed)
    say = print if main else (lambda *a, **k: None)

    # ---- setup: data (checked before any model loads), model, reference -------------------------
    method = METHODS[cfg.method]

    def inputs():
        table, summary = training_table(cfg)
        class_weights(cfg, summary, say)  # every process resolves them; the main one says so
        return table, summary, model_source(cfg, run_dir)

    table, summary, source = _in_turn(accelerator, inputs)
    cfg.model.name_or_path = source
    if main:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        layout = {"NO": "", "MULTI_CPU": ", DDP (gloo)", "MULTI_GPU": ", DDP", "FSDP": ", FSDP2"}.get(
            sharded, f", {sharded}"
        )
        say(f"thumbs: {cfg.method} run in {run_dir} on {world} process(es){layout}\n" + cfg.to_yaml())

    tokenizer = load_tokenizer(source)
    items = build_items(
        cfg.method, table, Encoder(tokenizer, cfg.data.max_length, cfg.data.max_prompt_length), cfg.train.seed
    )
    summary.update(items.summary)
    say(f"thumbs: {len(items)} examples; {json.dumps(items.summary)}")
    if world > 1:  # each rank takes its slice of one shared order: all must hold the same examples
        digests = accelerator.gather(torch.tensor([_digest(items)], device=accelerator.device))
        if len(set(digests.tolist())) > 1:
            raise ThumbsError(
                "the processes built different training examples from data.train",
                file=str(cfg.data.train),
                hint="every process (every node) must read the same files: put them on a shared path",
            )

    # the same fresh adapter on every process, whatever building the inputs drew from the generator
    # (the main process may have made the tiny base model); FSDP2, unlike DDP, does not broadcast it
    set_seed(cfg.train.seed)
    model = build_model(cfg, source)
    if cfg.model.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if cfg.model.lora.enabled:
            model.enable_input_require_grads()
    model.to(accelerator.device)
    ref = reference_logps(
        model, items, method.ref_roles, run_dir=run_dir, max_length=cfg.data.max_length, accelerator=accelerator,
        pad_id=tokenizer.pad_token_id, batch_size=cfg.train.ref_batch_size, chunk_size=cfg.train.logps_chunk_size,
    )  # fmt: skip

    micro = cfg.train.batch_size
    global_micro = micro * world
    per_epoch = len(items) // global_micro
    if per_epoch == 0:
        raise ThumbsError(
            f"{len(items)} examples cannot fill one microbatch of {micro} on {world} process(es)",
            hint="lower train.batch_size or add data",
        )
    total_steps = cfg.train.max_steps or max(
        1, math.floor(cfg.train.epochs * per_epoch / cfg.train.grad_accum)
    )
    optimizer = _adamw([p for p in model.parameters() if p.requires_grad], cfg)
    scheduler = get_scheduler(
        {"constant": "constant_with_warmup"}.get(cfg.train.schedule, cfg.train.schedule),
        optimizer,
        num_warmup_steps=round(cfg.train.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    wrapped, optimizer = accelerator.prepare(CompletionLogps(model, cfg.train.logps_chunk_size), optimizer)
    trainable = [p for p in wrapped.parameters() if p.requires_grad]  # FSDP2 put shards in their place
    start = load_checkpoint(run_dir, model, optimizer, scheduler, accelerator) if resume else 0
    if main:
        (run_dir / "data_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        _truncate_metrics(run_dir / "metrics.jsonl", start)
    say(
        f"thumbs: {total_steps} optimizer steps of {global_micro * cfg.train.grad_accum} examples"
        + (f", resuming at step {start}" if start else "")
    )

    all_reduce = torch.distributed.all_reduce if world > 1 else None
    lengths = items.lengths()
    epochs: dict[int, list[list[int]]] = {}

    def microbatch(k: int) -> list[int]:
        epoch, j = divmod(k, per_epoch)
        if epoch not in epochs:
            epochs.clear()
            epochs[epoch] = epoch_microbatches(
                lengths, global_micro, epoch, cfg.train.seed, cfg.train.group_by_length
            )
        return epochs[epoch][j][rank * micro : (rank + 1) * micro]

    def forward(role_names, index):
        seqs = [items.seqs[role][i] for role in role_names for i in index]
        batch = (pack if cfg.train.packing else collate)(seqs, tokenizer.pad_token_id)
        batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        logps, tokens = wrapped(**batch)
        n = len(index)
        return (
            {r: logps[j * n : (j + 1) * n] for j, r in enumerate(role_names)},
            {r: tokens[j * n : (j + 1) * n] for j, r in enumerate(role_names)},
            sum(len(ids) for ids, _ in seqs),
        )

    # ---- loop ------------------------------------------------------------------------------------
    model.train()
    sums: dict = {}
    interval = {"kl": 0.0, "micro": 0, "grad_norm": 0.0, "steps": 0, "tokens": 0, "t0": time.perf_counter()}
    bar = tqdm(total=total_steps, initial=start, disable=not main, desc=cfg.method, dynamic_ncols=True)
    step = start
    try:
        while step < total_steps:
            for a in range(cfg.train.grad_accum):
                index = microbatch(step * cfg.train.grad_accum + a)
                label = items.label[index].to(accelerator.device)
                weight = items.weight[index].to(accelerator.device)
                policy, tokens = {}, {}
                with torch.no_grad():
                    if method.nograd_roles:
                        p, _, _ = forward(method.nograd_roles, index)
                        policy.update(p)
                sync = a == cfg.train.grad_accum - 1
                ctx = accelerator.no_sync(wrapped) if not sync else _null()
                with ctx, accelerator.autocast():
                    p, t, real_tokens = forward(method.grad_roles, index)
                    policy.update(p)
                    tokens.update(t)
                    ref_b = {r: ref[r][index].to(accelerator.device) for r in method.ref_roles}
                    losses, metrics = method.loss(policy, tokens, ref_b, label, cfg, all_reduce)
                    # mean over the accumulated global batch; DDP averages gradients over processes
                    loss = (losses * weight).sum() * world / (global_micro * cfg.train.grad_accum)
                    accelerator.backward(loss)
                interval["kl"] += float(metrics.pop("kl", 0.0))
                interval["micro"] += 1
                interval["tokens"] += real_tokens
                metrics["loss_sum"] = (losses * weight).detach().sum()
                metrics["count"] = torch.tensor(float(len(index)), device=accelerator.device)
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value.detach().float()
            # an infinite limit measures the norm without clipping; under FSDP2 it comes back as a DTensor
            norm = accelerator.clip_grad_norm_(trainable, cfg.train.max_grad_norm or float("inf"))
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            interval["grad_norm"] += float(norm)
            interval["steps"] += 1
            bar.update(1)
            if step % cfg.train.log_every == 0 or step == total_steps:
                record = _log_record(step, per_epoch, cfg, sums, interval, scheduler, accelerator)
                if main:
                    with (run_dir / "metrics.jsonl").open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    bar.set_postfix(
                        {
                            k.split("/")[-1]: f"{record[k]:.3g}"
                            for k in ("loss", "kl", "rewards/margin")
                            if k in record
                        }
                    )
                sums = {}
                interval = {
                    "kl": 0.0,
                    "micro": 0,
                    "grad_norm": 0.0,
                    "steps": 0,
                    "tokens": 0,
                    "t0": time.perf_counter(),
                }
            if cfg.train.save_every and step % cfg.train.save_every == 0 and step < total_steps:
                save_checkpoint(
                    run_dir, step, model, optimizer, scheduler, accelerator, cfg.train.save_total_limit
                )
    except KeyboardInterrupt:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
        path = save_checkpoint(
            run_dir, step, model, optimizer, scheduler, accelerator, cfg.train.save_total_limit
        )
        say(f"\nthumbs: interrupted; saved {path}. Continue with --resume.")
        raise
    bar.close()

    # ---- save ------------------------------------------------------------------------------------
    if sharded == "FSDP":  # gather the shards (every process), then save a plain copy from the main one
        from thumbs.checkpoint import gathered_state

        weights = gathered_state(model, trainable_only=False)
        if main:
            plain = build_model(cfg, source)
            plain.load_state_dict(weights)  # strict: a name that does not match would save the start
            _save_final(plain, tokenizer, run_dir, cfg)
    elif main:
        _save_final(model, tokenizer, run_dir, cfg)
    say(
        f"thumbs: done. Run folder: {run_dir}\n  metrics: {run_dir / 'metrics.jsonl'}\n  model:   {run_dir / 'final'}"
    )
    accelerator.wait_for_everyone()
    return run_dir


def _in_turn(accelerator, build):
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


def _digest(items) -> int:
    """A 63-bit fingerprint of the tokenized examples, their labels and weights, in order."""
    import hashlib

    content = repr((items.seqs, items.label.tolist(), items.weight.tolist())).encode()
    return int.from_bytes(hashlib.blake2b(content, digest_size=7).digest(), "little")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _log_record(step, per_epoch, cfg, sums, interval, scheduler, accelerator) -> dict:
    keys = sorted(sums)
    # some counts (SFT's) are made on the CPU: move them where the reduce runs
    stacked = __import__("torch").stack([sums[k].to(accelerator.device) for k in keys])
    totals = dict(zip(keys, accelerator.reduce(stacked, "sum").tolist()))
    seconds = time.perf_counter() - interval["t0"]
    tokens = accelerator.reduce(
        __import__("torch").tensor(float(interval["tokens"]), device=accelerator.device), "sum"
    )
    record = {
        "step": step,
        "epoch": round(step * cfg.train.grad_accum / per_epoch, 4),
        "loss": totals["loss_sum"] / max(totals["count"], 1),
        "lr": scheduler.get_last_lr()[0],
        "grad_norm": interval["grad_norm"] / max(interval["steps"], 1),
        "tokens_per_second": float(tokens) / max(seconds, 1e-9),
        "examples": int(totals["count"]),
    }
    if cfg.method == "kto":
        record["kl"] = interval["kl"] / max(interval["micro"], 1)
        for cls in ("desirable", "undesirable"):
            if totals[f"rewards/{cls}_count"]:
                record[f"rewards/{cls}"] = totals[f"rewards/{cls}_sum"] / totals[f"rewards/{cls}_count"]
                record[f"logps/{cls}"] = totals[f"logps/{cls}_sum"] / totals[f"rewards/{cls}_count"]
        if "rewards/desirable" in record and "rewards/undesirable" in record:
            record["rewards/margin"] = record["rewards/desirable"] - record["rewards/undesirable"]
    elif cfg.method == "dpo":
        n = max(totals["pairs_count"], 1)
        record["rewards/chosen"] = totals["rewards/chosen_sum"] / n
        record["rewards/rejected"] = totals["rewards/rejected_sum"] / n
        record["rewards/margin"] = record["rewards/chosen"] - record["rewards/rejected"]
        record["rewards/accuracy"] = totals["rewards/accuracy_sum"] / n
    else:
        record["nll"] = totals["nll_sum"] / max(totals["nll_count"], 1)
    return record


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop logged steps after the checkpoint: they are about to be logged again."""
    if not path.exists():
        return
    kept = [
        line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step
    ]
    path.write_text("".join(line + "\n" for line in kept))


def _save_final(model, tokenizer, run_dir: Path, cfg: Config) -> None:
    import os
    import shutil

    final, tmp = run_dir / "final", run_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if cfg.model.lora.enabled and cfg.model.merge_lora:
        merged = model.merge_and_unload()
        merged.save_pretrained(tmp / "merged")
        tokenizer.save_pretrained(tmp / "merged")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def train_command(
    config: Path = typer.Argument(..., help="YAML config (see examples/)."),
    output_dir: str = typer.Option(None, "--output-dir", "-o", help="Run folder (overrides output_dir)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set train.max_steps=10"),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the last checkpoint in the run folder."
    ),
    nproc: int = typer.Option(1, "--nproc", help="Processes on this machine (Accelerate/torch.distributed)."),
):
    """Train with KTO, DPO or SFT from a config."""
    overrides = list(set_) + ([f"output_dir={output_dir}"] if output_dir else [])
    cfg = load_config(config, overrides)
    if resume and (Path(cfg.output_dir) / "config.yaml").exists():
        saved = load_config(Path(cfg.output_dir) / "config.yaml")
        cfg.model.name_or_path = saved.model.name_or_path
    if nproc > 1:
        from thumbs.distributed import launch

        raise typer.Exit(launch(nproc, sys.argv[1:]))
    try:
        train(cfg, resume=resume)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
