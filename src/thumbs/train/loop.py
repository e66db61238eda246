"""One training loop for every method (KTO, DPO, SFT, BCO, APO-zero), read top to bottom: setup → loop → save.

A method (``thumbs.train.methods``) says which sequences an example needs and how its loss reads
their log-probs; everything else is here and shared. What comes before the first step lives in
``thumbs.train.setup``, a step's forward passes in ``passes``, the microbatch order in
``batches``, the log records in ``metrics``, checkpoints in ``checkpoint``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from thumbs.config import Config, load_config
from thumbs.errors import ThumbsError
from thumbs.folders import write_text


@dataclass
class Run:
    """What the loop reads and changes: built by ``setup``, used by ``loop`` and ``save``."""

    cfg: Config
    accelerator: Any
    run_dir: Path
    method: Any  # thumbs.train.methods.Method
    items: Any  # thumbs.train.methods.Items
    ref: dict  # role -> reference log-probs [N]
    tokenizer: Any
    source: str  # the starting model's local path
    model: Any  # the model (with its adapter); ``wrapped`` is it under Accelerate
    wrapped: Any
    trainable: list
    optimizer: Any
    scheduler: Any
    per_epoch: int  # global microbatches in one epoch
    total_steps: int
    start: int  # the step resumed from (0 for a new run)
    layout: str  # Accelerate's distributed type as the run started: NO, MULTI_CPU, MULTI_GPU, FSDP
    record: dict  # the config and data fingerprint, kept in each checkpoint for --resume to check
    skipped: int  # steps skipped so far for a non-finite loss or gradient norm (kept in checkpoints)
    state: Any = None  # the method's state (BCO's reward shift), checkpointed; None for most methods

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def say(self, *args, **kwargs) -> None:
        if self.main:
            print(*args, **kwargs)


def train(cfg: Config, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Train ``cfg`` into ``cfg.output_dir``, which this process owns until the end; with ``resume``,
    continue from its last checkpoint; with ``overwrite``, clear another run's files first."""
    with contextlib.ExitStack() as hold:
        run = setup(cfg, resume=resume, overwrite=overwrite, hold=hold)
        loop(run)
        save(run)
    return run.run_dir


# ---- setup ---------------------------------------------------------------------------------------


def setup(cfg: Config, *, resume: bool, overwrite: bool = False, hold: contextlib.ExitStack) -> Run:
    """Processes, data (checked before any model loads), model, reference log-probs, optimizer."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from thumbs.train import runfolder, trackers
    from thumbs.train import setup as parts
    from thumbs.train.checkpoint import read_checkpoint, restore
    from thumbs.train.logprobs import CompletionLogps
    from thumbs.train.methods import METHODS, build_items
    from thumbs.train.metrics import truncate_metrics
    from thumbs.train.reference import reference_logps

    # under torchrun on a machine without GPUs Accelerate needs cpu=True, else each rank trains alone
    spread = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    run_dir = Path(cfg.output_dir)
    tracking = trackers.accelerator_options(cfg, run_dir)  # a missing tracker package fails here
    accelerator = Accelerator(mixed_precision=parts.precision(cfg), cpu=spread, **tracking)
    main, world = accelerator.is_main_process, accelerator.num_processes
    kind = accelerator.distributed_type.value  # read now: preparing the model may change it
    parts.check_sharding(accelerator)
    runfolder.claim(accelerator, run_dir, hold, resume=resume, overwrite=overwrite)  # or every process stops
    set_seed(cfg.train.seed)
    say = print if main else (lambda *a, **k: None)

    def inputs():
        table, summary = parts.training_table(cfg)
        parts.class_weights(cfg, summary, say)  # every process resolves them; the main one says so
        return table, summary, parts.model_source(cfg, run_dir)

    table, summary, source = parts.in_turn(accelerator, inputs)
    cfg.model.name_or_path = source
    if main:
        layout = {"NO": "", "MULTI_CPU": ", DDP (gloo)", "MULTI_GPU": ", DDP", "FSDP": ", FSDP2"}.get(
            kind, f", {kind}"
        )
        say(f"thumbs: {cfg.method} run in {run_dir} on {world} process(es){layout}\n" + cfg.to_yaml())

    from thumbs.models import load_tokenizer
    from thumbs.tokenize import Encoder

    tokenizer = load_tokenizer(source)
    encoder = Encoder(tokenizer, cfg.data.max_length, cfg.data.max_prompt_length)
    items = build_items(cfg.method, table, encoder, cfg.train.seed)
    summary.update(items.summary)
    say(f"thumbs: {len(items)} examples; {json.dumps(items.summary)}")
    digest = parts.digest(items)
    if world > 1:  # each rank takes its slice of one shared order: all must hold the same examples
        digests = accelerator.gather(torch.tensor([digest], device=accelerator.device))
        if len(set(digests.tolist())) > 1:
            raise ThumbsError(
                "the processes built different training examples from data.train",
                file=str(cfg.data.train),
                hint="every process (every node) must read the same files: put them on a shared path",
            )
    record = runfolder.record(cfg, digest)
    # the checkpoint is read (and checked against this config and data) before any model loads
    checkpoint = read_checkpoint(run_dir, accelerator.process_index, say) if resume else None
    if resume:
        saved = checkpoint.state.get("run") if checkpoint else runfolder.saved_config(run_dir)
        runfolder.check_resume(saved, record, checkpoint.path if checkpoint else run_dir)
        parts.same_checkpoint(accelerator, checkpoint.step if checkpoint else 0)
    if main:
        write_text(run_dir / "config.yaml", cfg.to_yaml())

    # the same fresh adapter on every process, whatever building the inputs drew from the generator
    # (the main process may have made the tiny base model); FSDP2, unlike DDP, does not broadcast it
    set_seed(cfg.train.seed)
    model = parts.build_model(cfg, source)
    parts.checkpoint_activations(model, cfg)
    model.to(accelerator.device)
    method = METHODS[cfg.method]
    ref = reference_logps(
        model, items, method.ref_roles, run_dir=run_dir, max_length=cfg.data.max_length, accelerator=accelerator,
        say=say, pad_id=tokenizer.pad_token_id, batch_size=cfg.train.ref_batch_size, chunk_size=cfg.train.logps_chunk_size,
    )  # fmt: skip

    global_micro = cfg.train.batch_size * world
    per_epoch = len(items) // global_micro
    if per_epoch == 0:
        raise ThumbsError(
            f"{len(items)} examples cannot fill one microbatch of {cfg.train.batch_size} on {world} process(es)",
            hint="lower train.batch_size or add data",
        )
    total_steps = cfg.train.max_steps or max(
        1, math.floor(cfg.train.epochs * per_epoch / cfg.train.grad_accum)
    )
    optimizer = parts.adamw([p for p in model.parameters() if p.requires_grad], cfg)
    scheduler = get_scheduler(
        {"constant": "constant_with_warmup"}.get(cfg.train.schedule, cfg.train.schedule),
        optimizer,
        num_warmup_steps=round(cfg.train.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    wrapped, optimizer = accelerator.prepare(CompletionLogps(model, cfg.train.logps_chunk_size), optimizer)
    trainable = [p for p in wrapped.parameters() if p.requires_grad]  # FSDP2 put shards in their place
    state = method.state() if method.state else None
    start = restore(checkpoint, model, optimizer, scheduler, state) if checkpoint else 0
    skipped = (
        int(checkpoint.state["run"].get("skipped", 0)) if checkpoint and checkpoint.state.get("run") else 0
    )
    if main:
        write_text(run_dir / "data_summary.json", json.dumps(summary, indent=2, default=str))
        truncate_metrics(run_dir / "metrics.jsonl", start, say)
    trackers.start(accelerator, cfg, run_dir, resumed_at=start)
    say(
        f"thumbs: {total_steps} optimizer steps of {global_micro * cfg.train.grad_accum} examples"
        + (f", resuming at step {start}" if start else "")
    )
    return Run(
        cfg, accelerator, run_dir, method, items, ref, tokenizer, source, model, wrapped, trainable,
        optimizer, scheduler, per_epoch, total_steps, start, kind, record, skipped, state,
    )  # fmt: skip


# ---- loop ----------------------------------------------------------------------------------------


def loop(run: Run) -> None:
    """Optimizer steps from ``run.start`` to ``run.total_steps``: log, checkpoint, save on Ctrl-C."""
    from tqdm.auto import tqdm

    from thumbs.cores import adjust_threads
    from thumbs.train.batches import Microbatches
    from thumbs.train.checkpoint import save_checkpoint
    from thumbs.train.metrics import Tally, append, nonfinite_error

    cfg = run.cfg
    order = Microbatches(run.items.lengths(), cfg, run.accelerator, run.per_epoch)
    tally = Tally()
    bar = tqdm(
        total=run.total_steps, initial=run.start, disable=not run.main, desc=cfg.method, dynamic_ncols=True
    )
    checkpoint = lambda step: save_checkpoint(  # noqa: E731
        run.run_dir, step, run.model, run.optimizer, run.scheduler, run.accelerator,
        cfg.train.save_total_limit, {**run.record, "skipped": run.skipped}, run.state,
    )  # fmt: skip
    run.model.train()
    step = run.start
    kept = run.state.state_dict() if run.state else None  # the method state as of `step`, for Ctrl-C
    try:
        while step < run.total_steps:
            adjust_threads()  # as many threads as there are free cores (thumbs.cores)
            fault = train_step(
                run, [order(step * cfg.train.grad_accum + a) for a in range(cfg.train.grad_accum)], tally
            )
            step += 1
            bar.update(1)
            if fault:
                if run.state:  # the skipped step's microbatches do not count in the method's state either
                    run.state.load_state_dict(kept)
                run.skipped += 1
                if run.skipped > cfg.train.skip_nonfinite_steps:
                    bar.close()
                    raise nonfinite_error(
                        run.run_dir, step, fault, run.skipped, cfg.train.skip_nonfinite_steps
                    )
                run.say(f"\nthumbs: step {step} skipped: {fault}")
            kept = run.state.state_dict() if run.state else None
            if step % cfg.train.log_every == 0 or step == run.total_steps:
                record = tally.record(
                    step, run.per_epoch, cfg, run.scheduler.get_last_lr()[0], run.accelerator
                )
                if run.main:
                    append(run.run_dir / "metrics.jsonl", record)
                    run.accelerator.log(record, step=step)  # train.report_to's trackers, if any
                    shown = ("loss", "kl", "rewards/margin")
                    bar.set_postfix({k.split("/")[-1]: f"{record[k]:.3g}" for k in shown if k in record})
            if cfg.train.save_every and step % cfg.train.save_every == 0 and step < run.total_steps:
                checkpoint(step)
    except KeyboardInterrupt:
        bar.close()
        if run.state:  # undo the interrupted step's microbatches: the checkpoint is of `step`
            run.state.load_state_dict(kept)
        run.optimizer.zero_grad(set_to_none=True)
        run.say(f"\nthumbs: interrupted; saved {checkpoint(step)}. Continue with --resume.")
        raise
    bar.close()


def train_step(run: Run, microbatches: list[list[int]], tally) -> str | None:
    """One optimizer step: forward, loss and backward for each microbatch, then clip and step.

    A NaN or infinite loss or gradient norm updates nothing: the gradients are dropped and what
    went wrong comes back (the step counts as skipped); None when the step was taken.
    """
    import torch

    from thumbs.train.passes import continue_forward, continued_for, forward

    cfg, accelerator, method = run.cfg, run.accelerator, run.method
    world, last = accelerator.num_processes, len(microbatches) - 1
    examples = cfg.train.batch_size * world * len(microbatches)  # the accumulated global batch
    bad = []  # (microbatch, examples) whose loss is not finite, on this process
    for a, index in enumerate(microbatches):
        label = run.items.label[index].to(accelerator.device)
        weight = run.items.weight[index].to(accelerator.device)
        continued = continued_for(run, index)  # the no-grad sequences that continue grad-pass prompts
        if not continued:
            with torch.no_grad():
                policy, _, _ = forward(run, method.nograd_roles, index)
        with accelerator.no_sync(run.wrapped) if a < last else _null(), accelerator.autocast():
            with_grad, tokens, real_tokens = forward(run, method.grad_roles, index, continued)
            if continued:  # after the grad pass, which has recorded the prompts they continue
                with torch.no_grad():
                    policy = continue_forward(run, method.nograd_roles, index, continued)
            policy.update(with_grad)
            ref = {r: run.ref[r][index].to(accelerator.device) for r in method.ref_roles}
            losses, metrics = method.loss(policy, tokens, ref, label, cfg, _all_reduce(world), run.state)
            # mean over the accumulated global batch; DDP averages gradients over processes
            accelerator.backward((losses * weight).sum() * world / examples)
        if not torch.isfinite(losses * weight).all():
            bad.append((a, index))
        tally.microbatch(metrics, losses * weight, real_tokens)
    # an infinite limit measures the norm without clipping; under FSDP2 it comes back as a DTensor
    norm = accelerator.clip_grad_norm_(run.trainable, cfg.train.max_grad_norm or float("inf"))
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    flagged = (
        len(bad) if world == 1 else int(accelerator.reduce(torch.tensor(len(bad), device=accelerator.device)))
    )
    if flagged or not math.isfinite(norm):  # the norm is global, the flag summed: every process agrees
        run.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # "scheduler before optimizer": no update was made, as intended
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
            run.scheduler.step()  # the step is spent: the schedule stays in step with the step count
        tally.skip()
        from thumbs.train.metrics import describe_nonfinite

        return describe_nonfinite(norm, bad, flagged, run.items, run.tokenizer)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    tally.step(norm)
    return None


def _all_reduce(world: int):
    import torch

    return torch.distributed.all_reduce if world > 1 else None


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---- save ----------------------------------------------------------------------------------------


def save(run: Run) -> None:
    """The final model (the adapter under LoRA), written whole into ``final/`` or not at all."""
    from thumbs.train.checkpoint import save_final

    if run.layout == "FSDP":  # gather the shards (every process) ...
        from thumbs.train.checkpoint import gathered_state
        from thumbs.train.setup import build_model

        weights = gathered_state(run.model, trainable_only=False)
        if run.main:  # ... then save a plain copy from the main one
            plain = build_model(run.cfg, run.source)
            plain.load_state_dict(weights)  # strict: a name that does not match would save the start
            save_final(plain, run.tokenizer, run.run_dir, run.cfg)
    elif run.main:
        save_final(run.model, run.tokenizer, run.run_dir, run.cfg)
    d = run.run_dir
    run.say(f"thumbs: done. Run folder: {d}\n  metrics: {d / 'metrics.jsonl'}\n  model:   {d / 'final'}")
    run.accelerator.wait_for_everyone()
    if run.accelerator.num_processes > 1:
        _quiet_process_group(run)
    run.accelerator.end_training()  # closes the trackers' runs; under DDP it also ends the process group


def _quiet_process_group(run: Run) -> None:
    """Let gloo's threads finish with the last collectives before its process group is destroyed.

    gloo's work thread drops a finished collective after the caller has its result, and dropping it
    frees tensors that Python owns: it needs the GIL. The group's destructor joins that thread
    while holding the GIL, so if it runs first (it ran when the DDP wrapper holding the group was
    freed, as ``train`` returned) the process hangs for ever after "done". Seen once in CI: rank 1
    of a two-process run stuck in ``~ProcessGroupGloo`` joining a thread that waited for the GIL to
    free the final barrier's work. So: free the wrapper (and Accelerate's references to it) while
    the group still lives, then release the GIL for a moment so the thread can finish; the group is
    destroyed afterwards, with nothing left for its thread to do. (The same CI run had an FSDP2
    rank abort at this teardown, "terminate called without an active exception"; its sharded model
    is freed here too, so the group goes in one known place.)
    """
    import time

    run.wrapped = run.model = run.optimizer = run.scheduler = None  # FSDP2's shards hold the group too
    run.accelerator.free_memory()  # drops Accelerate's references and collects
    time.sleep(0.2)  # releases the GIL


def train_command(
    config: Path = typer.Argument(..., help="YAML config (see examples/)."),
    output_dir: str = typer.Option(None, "--output-dir", "-o", help="Run folder (overrides output_dir)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set train.max_steps=10"),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in the folder from its newest checkpoint that loads."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Clear another run's files from the run folder first."
    ),
    nproc: int = typer.Option(1, "--nproc", help="Processes on this machine (Accelerate/torch.distributed)."),
):
    """Train with KTO, DPO, BCO, APO-zero or SFT from a config."""
    overrides = list(set_) + ([f"output_dir={output_dir}"] if output_dir else [])
    cfg = load_config(config, overrides)
    if resume and (Path(cfg.output_dir) / "config.yaml").exists():
        saved = load_config(Path(cfg.output_dir) / "config.yaml")
        cfg.model.name_or_path = saved.model.name_or_path
    if nproc > 1:
        from thumbs.train.distributed import launch

        raise typer.Exit(launch(nproc, sys.argv[1:]))
    try:
        train(cfg, resume=resume, overwrite=overwrite)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
