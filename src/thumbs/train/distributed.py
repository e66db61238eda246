"""`thumbs train --nproc N`: N processes on this machine through torch.distributed's launcher.

The launcher is torch's elastic agent (what ``torchrun`` and ``accelerate launch`` run): it starts
the processes, gives each its rank, and stops them all when one fails, so a rank that raises
cannot leave the others waiting. Each process runs ``python -m thumbs`` with the same arguments
less ``--nproc``; Accelerate inside ``train`` picks the backend (NCCL on GPUs, gloo on CPU). For
FSDP, DeepSpeed or several machines, use ``accelerate launch -m thumbs train CONFIG`` with your own
Accelerate config (docs/cluster.md).
"""

from __future__ import annotations

import os
import sys
import uuid


def strip_nproc(argv: list[str]) -> list[str]:
    """The arguments without ``--nproc N`` / ``--nproc=N``: each launched process is one process."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m thumbs <argv>`` as ``nproc`` processes on this machine; the exit code.

    A user error (``ThumbsError``, exit 2) on any rank comes back as 2, after that rank printed it.
    """
    import torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    from thumbs.errors import ThumbsError

    if "LOCAL_RANK" in os.environ:
        raise ThumbsError(
            "--nproc in a process that a launcher started: each would start its own processes",
            hint="drop --nproc when you use accelerate launch or torchrun; they set the process count",
        )
    gpus = torch.cuda.device_count()
    if gpus and nproc > gpus:
        raise ThumbsError(
            f"--nproc {nproc} needs {nproc} GPUs (one per process); this machine has {gpus}",
            hint=f"use --nproc {gpus} or fewer",
        )
    if not gpus:
        os.environ["ACCELERATE_USE_CPU"] = "true"  # else Accelerate sees no GPU and runs each rank alone
    # CPU threads shared out between the processes (torchrun would give each one, with a warning)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # what torchrun --standalone does: a local rendezvous on a free port, so runs side by side don't collide
    rendezvous = ["--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", f"--rdzv-id={uuid.uuid4()}"]
    args = get_args_parser().parse_args(
        [*rendezvous, f"--nproc-per-node={nproc}", "-m", "thumbs", *strip_nproc(argv)]
    )
    config, entrypoint, entry_args = config_from_args(args)
    try:
        elastic_launch(config, entrypoint)(*entry_args)
    except ChildFailedError as err:
        codes = [failure.exitcode for failure in err.failures.values()]
        code = 2 if 2 in codes else next((c for c in codes if c > 0), 1)
        print(f"thumbs: {len(codes)} of {nproc} processes failed (exit codes {codes})", file=sys.stderr)
        return code
    except SignalException:
        return 130  # Ctrl-C or a kill: the agent has already stopped the workers
    return 0
