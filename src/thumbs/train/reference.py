"""Reference log-probs, computed once before training and cached on disk.

The reference is the starting model: with LoRA, the same model with its adapter disabled; with full
fine-tuning, the model itself before its first step. No second copy is ever loaded, and nothing of
the reference stays in memory during training. Work is sharded across processes and summed back.
The cache key is a fingerprint of the reference weights and of every token sequence.

Beside those whole-set files, a per-sequence store (one file per reference model, device, dtype and
torch version) keeps every value ever computed under a hash of its sequence's tokens, so another
run on the same votes finds most of its sequences there: DPO's chosen and rejected are the KTO run's
examples, a study's conditions are subsets or relabellings of its clean data. A value found there
equals this run's own to float rounding (its companions in a packed row differed), not to the last
bit; the run folder's file keeps a resumed run bit-exact whatever the store holds.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from thumbs.cores import adjust_threads
from thumbs.models import adapter_disabled
from thumbs.paths import cache_dir
from thumbs.tokenize import pack_shared
from thumbs.train.logprobs import completion_logps
from thumbs.train.methods import Items


def model_identity(model) -> str:
    """Hash of every weight of ``model`` but its LoRA adapter's (the reference's weights), under the
    names the bare model gives them (a base model and the same base under a PEFT wrapper hash
    alike), and of what changes their results beyond float rounding: device, dtype, torch. The
    weights are read once per call: compute it once and pass it on."""
    digest = hashlib.blake2b(digest_size=16)
    param = next(model.parameters())
    digest.update(f"{param.device.type}|{param.dtype}|{torch.__version__}".encode())
    named = {
        name.removeprefix("base_model.model.").replace(".base_layer.", "."): param
        for name, param in model.state_dict().items()
        if "lora_" not in name
    }
    for name, param in sorted(named.items()):
        digest.update(name.encode())
        digest.update(param.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sequence_key(ids, start: int) -> str:
    """A sequence's tokens and where its completion starts, hashed: its name in the per-sequence store."""
    data = torch.tensor(list(ids) + [-start - 1], dtype=torch.int64).numpy().tobytes()
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def fingerprint(
    identity: str, items: Items, roles: tuple[str, ...], max_length: int, how: dict | None = None
) -> str:
    """Hash of the reference (``model_identity``), of the sequences for ``roles``, and of
    ``how`` they are computed (batch, chunk, processes, device, dtype, torch): the same key means
    the same numbers to the last bit, not merely the same numbers to float rounding."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{identity}|{roles}|{max_length}|{sorted((how or {}).items())}".encode())
    for role in roles:
        digest.update(f"|{role}|{len(items.seqs[role])}".encode())
        for ids, start in items.seqs[role]:
            digest.update(torch.tensor(ids + [-start], dtype=torch.int32).numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def compute_reference_logps(
    model,
    items: Items,
    roles: tuple[str, ...],
    *,
    pad_id: int,
    batch_size: int,
    chunk_size: int,
    accelerator=None,
    known: dict[str, float] | None = None,
    computed: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Sequence log-probs [N] for each role, under the reference (adapter disabled).

    ``known`` (sequence_key → value): values already computed, taken instead of computing them;
    ``computed``, when given, receives every value this call computed, under its sequence_key.

    A sequence that occurs more than once (in two roles or twice in one) is computed once: KTO's
    mismatched pair (x_i, y_j) is example j itself whenever j answered the same prompt, so on a
    log whose votes answer few prompts (the demo's one) its KL role costs nothing, and a
    completion voted on by several users is one sequence. Distinct sequences keep their first
    appearance's order, roles in the order given.
    """
    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    distinct: dict[tuple, int] = {}
    where = {}
    for role in roles:
        where[role] = [
            distinct.setdefault((tuple(ids), start), len(distinct)) for ids, start in items.seqs[role]
        ]
    seqs = [(list(ids), start) for ids, start in distinct]
    names = (
        [sequence_key(ids, start) for ids, start in seqs]
        if known is not None or computed is not None
        else None
    )
    known = known or {}
    values = torch.zeros(len(seqs), dtype=torch.float32, device=device)
    missing = [i for i in range(len(seqs)) if names is None or names[i] not in known]
    if names is not None and len(missing) < len(seqs) and rank == 0:  # the all-reduce adds the others' 0
        found = [i for i in range(len(seqs)) if names[i] in known]
        values[torch.tensor(found, device=device)] = torch.tensor(
            [known[names[i]] for i in found], dtype=torch.float32, device=device
        )
    # in data order, not sorted by length: mixed lengths pack into fewer, fuller rows (on the
    # 135M shape, 64 sequences: 17.4 s against 22.0 s for length-sorted padded batches)
    mine = missing[rank::world]
    bar = tqdm(total=len(mine), desc="reference log-probs", unit="seq", disable=rank != 0, dynamic_ncols=True)
    with adapter_disabled(model):
        for first in range(0, len(mine), batch_size):
            adjust_threads()
            index = mine[first : first + batch_size]
            batch = pack_shared([seqs[i] for i in index], pad_id)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            logps, _ = completion_logps(model, **batch, chunk_size=chunk_size)
            values[torch.tensor(index, device=device)] = logps
            bar.update(len(index))
    if world > 1:
        torch.distributed.all_reduce(values)
    bar.close()
    model.train(was_training)
    values = values.cpu()
    if computed is not None:
        computed.update({names[i]: float(values[i]) for i in missing})
    return {role: values[torch.tensor(where[role], dtype=torch.long)] for role in roles}


def reference_logps(
    model, items: Items, roles, *, run_dir: Path, max_length: int, accelerator=None, say=print, **kwargs
):
    """From the run folder or the global cache when their fingerprint is this model's, these tokens'
    and this computation's; else computed and stored in both.

    A file whose fingerprint differs (another run's leftovers, data that grew, another batch size)
    is never used. Under several processes only the main process reads and writes these files and
    hands what it found to the others, so no rank reads a file while another writes it, and all
    ranks take the same path: compute together (sharded), or not at all.
    """
    if not roles:
        return {}
    main = accelerator is None or accelerator.is_main_process
    run_file, key, cached, logps = Path(run_dir) / "reference_logps.pt", None, None, None
    if main:
        device = next(model.parameters()).device
        how = {"batch": kwargs.get("batch_size"), "chunk": kwargs.get("chunk_size"), "device": device.type,
               "dtype": str(next(model.parameters()).dtype), "torch": torch.__version__,
               "processes": accelerator.num_processes if accelerator else 1, "layout": "distinct, shared prompts"}  # fmt: skip
        identity = model_identity(model)
        key = fingerprint(identity, items, tuple(roles), max_length, how)
        cached = cache_dir("reference") / f"{key}.pt"
        stored = load_cached(run_file, say)
        if stored is not None and stored.get("fingerprint") == key:
            logps = stored.get("logps")
        elif cached.exists():
            logps = load_cached(cached, say)
        if logps is not None and not _fits(logps, items, roles):
            logps = None
    store, known = None, None
    if main and logps is None:
        store = cache_dir("reference") / f"seq-{identity}.pt"
        known = (load_cached(store, say) or {}).get("values") or {}
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        logps, known = broadcast_object_list([logps, known])
    if logps is None:
        computed: dict[str, float] = {}
        logps = compute_reference_logps(
            model, items, tuple(roles), accelerator=accelerator, known=known, computed=computed, **kwargs
        )
        if main:
            save_atomic(logps, cached)
            _remember(store, computed)
            distinct = len({(tuple(ids), start) for role in roles for ids, start in items.seqs[role]})
            if distinct > len(computed):  # the rest came from the store
                say(
                    f"thumbs: reference log-probs of {distinct - len(computed)} of {distinct} distinct "
                    "sequences taken from earlier runs on the same model (equal to float rounding)"
                )
    if main:
        save_atomic({"fingerprint": key, "logps": logps}, run_file)
    return logps


STORE_LIMIT = 2_000_000  # values kept per model (about 60 MB); past it the store starts afresh


def _remember(store: Path, computed: dict[str, float]) -> None:
    """Add ``computed`` to the per-sequence store, re-read just before writing so that runs sharing
    the cache lose as little of each other's work as a whole-file replace allows."""
    if not computed:
        return
    values = (load_cached(store, lambda _: None) or {}).get("values") or {}
    if len(values) + len(computed) > STORE_LIMIT:
        values = {}
    values.update({name: value for name, value in computed.items() if math.isfinite(value)})
    save_atomic({"values": values}, store)


def load_cached(path: Path, say=print) -> dict | None:
    """A cached file's contents (tensors and plain types only), None when absent or unreadable."""
    if not path.exists():
        return None
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a cut or foreign file is recomputed, not trusted
        say(f"thumbs: note: ignoring {path}: it does not load ({type(err).__name__})")
        return None
    return value if isinstance(value, dict) else None


def _fits(logps: dict, items: Items, roles) -> bool:
    return all(
        torch.is_tensor(logps.get(r))
        and logps[r].shape == (len(items.seqs[r]),)
        and bool(logps[r].isfinite().all())
        for r in roles
    )


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # unique: runs may share the cache
    torch.save(obj, tmp)
    tmp.replace(path)
