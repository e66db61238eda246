"""``python -m thumbs`` under Accelerate's FSDP2 code path on CPU with gloo: for tests only.

Accelerate runs an FSDP config on a machine without GPUs as plain data parallelism. Launched in
place of ``-m thumbs`` (``accelerate launch --config_file fsdp.yaml tests/fsdp_on_cpu.py train
CONFIG``), this switches Accelerate's state to FSDP once it is built, so the test suite runs the
prepare / shard / gather / checkpoint code that GPUs run, with gloo instead of NCCL.
"""

import accelerate.state
from accelerate.utils import DistributedType

_init = accelerate.state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    plugin = kwargs.get("fsdp_plugin")
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin


accelerate.state.AcceleratorState.__init__ = _fsdp_on_cpu

if __name__ == "__main__":
    from thumbs.cli import app

    app()
