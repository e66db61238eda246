"""thumbs: turn thumbs-up/down feedback into a better language model.

The Python API mirrors the commands, with the same options by their Python names::

    from thumbs import ingest, audit, train, evaluate, compare

A config is a ``Config``, a dict of its sections or a YAML path; where a path to data is taken, a
``datasets.Dataset``, a pandas DataFrame or a pyarrow Table may stand instead. Calls are quiet
like the commands (``thumbs.quiet``). Names load on first use, so ``import thumbs`` stays fast:
no torch, no transformers. ``thumbs.train`` and ``thumbs.audit`` are also the packages of those
stages; called, they are the API's functions.
"""

from __future__ import annotations

import functools
import importlib

__version__ = "0.1.0"
__all__ = ["ingest", "audit", "train", "evaluate", "compare", "Config", "load_config", "ThumbsError"]
_WHERE = {
    "ingest": ("thumbs.data.tables", "ingest"),
    "audit": ("thumbs.audit", None),  # the package, callable
    "train": ("thumbs.train", None),  # the package, callable
    "evaluate": ("thumbs.eval.evaluation", "evaluate"),
    "compare": ("thumbs.report.compare", "compare"),
    "Config": ("thumbs.config", "Config"),
    "load_config": ("thumbs.config", "load_config"),
    "ThumbsError": ("thumbs.errors", "ThumbsError"),
}
_QUIETED = {"evaluate", "compare"}  # the others are quiet inside


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'thumbs' has no attribute {name!r}")
    module, attribute = _WHERE[name]
    value = importlib.import_module(module)
    value = getattr(value, attribute) if attribute else value
    if name in _QUIETED:
        value = _quiet(value, heavy=name == "evaluate")
    globals()[name] = value  # once loaded, a plain attribute
    return value


def _quiet(fn, *, heavy: bool):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        from thumbs.quiet import quiet

        if heavy:  # loaded before quiet(), which can then put its settings back
            import transformers.utils.logging  # noqa: F401
        with quiet():
            return fn(*args, **kwargs)

    return call


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
