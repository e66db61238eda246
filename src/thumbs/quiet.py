"""Quiet output: other libraries' progress bars and warnings the user cannot act on are silenced.

thumbs' own bars (one per long step: reference log-probs, training, sampling) stay. Used around
every command (``thumbs.cli``) and every call of the Python API (``thumbs``); on the way out
the previous settings come back, so a notebook keeps its own. Nothing heavy is imported here:
transformers and datasets are quietened through their own switches only once they are loaded,
and through the environment (read when they load) before that.
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager

# Deprecations inside transformers/PEFT/Accelerate/torch that thumbs calls, not the user.
CATEGORIES = (FutureWarning, DeprecationWarning, PendingDeprecationWarning)
# UserWarnings of the libraries under thumbs that say nothing a thumbs user can change.
MESSAGES = (
    r".*`torch_dtype` is deprecated.*",
    r".*None of the inputs have requires_grad=True.*",
    r".*the `lora_dropout` is set to 0.*",
    r".*Setting `save_embedding_layers` to `True`.*",
    r".*Could not find a config file in .* - will assume that the vocabulary was not modified.*",
    r".*loss_type=None was set in the config but it is unrecognised.*",
    r".*Found missing adapter keys while loading the checkpoint.*",
    r".*copying from a non-meta parameter in the checkpoint to a meta parameter.*",
)
ENVIRONMENT = {  # read by the libraries when they are first imported
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


@contextmanager
def quiet():
    """Silence third-party bars, logs below errors, and unactionable warnings for the block."""
    with warnings.catch_warnings():
        for category in CATEGORIES:
            warnings.filterwarnings("ignore", category=category)
        for message in MESSAGES:
            warnings.filterwarnings("ignore", message=message)
        restore = _libraries_quiet()
        try:
            yield
        finally:
            for undo in reversed(restore):
                undo()


def _libraries_quiet() -> list:
    """Switch the libraries' bars and logs off; the callables that switch them back."""
    restore = []
    for name, value in ENVIRONMENT.items():
        if name not in os.environ:
            os.environ[name] = value
            restore.append(lambda name=name: os.environ.pop(name, None))
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
        from huggingface_hub.utils import enable_progress_bars as hub_enable

        if not are_progress_bars_disabled():
            disable_progress_bars()
            restore.append(hub_enable)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        restore.append(lambda: hf_logging.set_verbosity(level))
        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            restore.append(hf_logging.enable_progress_bar)
    if "datasets" in sys.modules:
        from datasets.utils import are_progress_bars_disabled as ds_disabled
        from datasets.utils import disable_progress_bars as ds_disable
        from datasets.utils import enable_progress_bars as ds_enable
        from datasets.utils import logging as ds_logging

        if not ds_disabled():
            ds_disable()
            restore.append(ds_enable)
        level = ds_logging.get_verbosity()
        ds_logging.set_verbosity_error()
        restore.append(lambda: ds_logging.set_verbosity(level))
    return restore
