"""``thumbs.train(config, ...)``, the Python API's train: the command's options, a config as a
:class:`~thumbs.config.Config`, a dict of its sections or a YAML path, and in-memory data
(``datasets.Dataset``, pandas, pyarrow) in ``data.train``, written into the run folder first.
"""

from __future__ import annotations

from pathlib import Path

from thumbs.config import Config, load_config
from thumbs.data.tables import as_table, write_table
from thumbs.errors import ThumbsError
from thumbs.quiet import quiet


def train(config: Config | dict | str | Path | None = None, *, output_dir: str | Path | None = None,
          set: dict | list | None = None, resume: bool = False, overwrite: bool = False) -> Path:  # fmt: skip
    """``thumbs train CONFIG [-o DIR] [--set k=v ...] [--resume | --overwrite]``; the run folder.

    ``set`` overrides keys as ``{"train.max_steps": 10}`` (or ``["train.max_steps=10"]``).
    """
    import transformers.utils.logging  # noqa: F401  loaded before quiet(), which then restores it

    from thumbs.train.loop import train as run_train

    tree, memory = _tree(config), {}
    for key, value in set.items() if isinstance(set, dict) else [s.split("=", 1) for s in set or []]:
        _assign(tree, key, value)
    if output_dir is not None:
        tree["output_dir"] = str(output_dir)
    train_data = tree.get("data", {}).get("train")
    for i, item in enumerate(train_data if isinstance(train_data, (list, tuple)) else [train_data]):
        table = as_table(item)
        if table is not None:
            memory[i] = table
    cfg = _validate(tree, memory)
    run_dir = Path(cfg.output_dir)
    if memory:
        if (run_dir / "final").exists() and not (resume or overwrite):
            raise ThumbsError("the output folder already holds a finished run", file=str(run_dir),
                              hint="pass resume=True or another output_dir")  # fmt: skip
        paths = [str(write_table(table, run_dir / "data")) for _, table in sorted(memory.items())]
        given = cfg.data.train if isinstance(cfg.data.train, list) else [cfg.data.train]
        cfg.data.train = [paths.pop(0) if i in memory else s for i, s in enumerate(given)]
        if len(cfg.data.train) == 1:
            cfg.data.train = cfg.data.train[0]
    with quiet():
        return run_train(cfg, resume=resume, overwrite=overwrite)


def _tree(config) -> dict:
    if config is None:
        return {}
    if isinstance(config, Config):
        return config.model_dump(mode="python")
    if isinstance(config, dict):
        return _copy_tree(config)  # the caller's dict stays as it was; tables are not copied
    return load_config(config).model_dump(mode="python")


def _copy_tree(node: dict) -> dict:
    return {k: _copy_tree(v) if isinstance(v, dict) else v for k, v in node.items()}


def _assign(tree: dict, dotted: str, value) -> None:
    import yaml

    node = tree
    *parents, last = dotted.strip().split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = yaml.safe_load(value) if isinstance(value, str) else value


def _validate(tree: dict, memory: dict) -> Config:
    """The config, with in-memory data standing in as placeholders until it is written."""
    from pydantic import ValidationError

    from thumbs.config import _describe

    if memory:
        train_data = tree["data"]["train"]
        if isinstance(train_data, (list, tuple)):
            tree["data"]["train"] = [f"<table {i}>" if i in memory else s for i, s in enumerate(train_data)]
        else:
            tree["data"]["train"] = "<table 0>"
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise _describe(err, "<the config given>") from None
