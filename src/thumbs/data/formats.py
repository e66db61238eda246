"""Data the Hugging Face ecosystem already has: ``datasets`` folders, Hub dataset ids, TRL's formats.

- A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.
- A Hub dataset id, ``hf:ORG/NAME[:SPLIT]`` (or a bare ``ORG/NAME`` that is no path on disk),
  read through ``datasets`` from its local cache only: thumbs never downloads, so a dataset that
  is not cached fails at once with the command that fetches it (``HF_HUB_OFFLINE=0`` lets
  ``datasets`` try the Hub).
- TRL's standard formats as they are: unpaired ``prompt/completion/label`` and paired
  ``prompt/chosen/rejected``, each as text or conversational (lists of ``{role, content}``
  messages; ``chosen``/``rejected`` may hold the whole conversation, TRL's implicit prompt).

A conversational example becomes thumbs' shape: the prompt as its messages (JSON text, as a
JSONL chat prompt is read), the completion as the text of its final assistant message, earlier
completion messages joining the prompt.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa

from thumbs.errors import ThumbsError
from thumbs.tokenize import as_messages

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")
COMPLETIONS = ("completion", "chosen", "rejected")


def is_saved_dataset(path: Path) -> bool:
    """A folder that ``save_to_disk`` wrote (one dataset, or a dict of splits)."""
    return path.is_dir() and any((path / n).exists() for n in ("dataset_info.json", "dataset_dict.json"))


def hub_id(source: str) -> str | None:
    """``ORG/NAME[:SPLIT]`` when ``source`` names a Hub dataset rather than a file."""
    if source.startswith("hf:"):
        return source[3:]
    if HUB_ID.match(source) and not Path(source).exists() and not Path(source).suffix:
        return source
    return None


def read_dataset(source: str, split: str | None = None) -> pa.Table | None:
    """The rows of a ``datasets`` folder or Hub id as an Arrow table; None for other sources."""
    path = Path(source)
    if is_saved_dataset(path):
        import datasets

        with _quiet_datasets():
            loaded = datasets.load_from_disk(str(path))
        return _table(_one_split(loaded, split, source))
    name = hub_id(source)
    if name is None:
        return None
    name, _, wanted = name.partition(":")
    try:
        loaded = load_hub_dataset(name, wanted or None)
    except ThumbsError as err:
        if source.startswith("hf:") or "not in the local datasets cache" not in err.message:
            raise
        raise ThumbsError(
            f"no file or folder '{source}', and no dataset of that id in the local datasets cache",
            file=source,
            hint="check the path in data.train; for a Hub dataset, fetch it once with "
            f"python -c \"import datasets; datasets.load_dataset('{name}')\"",
        ) from None
    return _table(_one_split(loaded, split if not wanted else None, source))


def load_hub_dataset(name: str, split: str | None = None):
    """``datasets.load_dataset`` from the local cache (offline unless HF_HUB_OFFLINE=0 is set)."""
    import datasets

    online = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("0", "false", "no")
    try:
        with _quiet_datasets(), _nullcontext() if online else _offline():
            return datasets.load_dataset(name, split=split)
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        if isinstance(err, ValueError) and "split" in str(err).lower():
            raise ThumbsError(f"dataset '{name}' has no split '{split}': {err}", file=name) from None
        where = "nor on the Hub" if online else "(thumbs reads Hub datasets offline)"
        raise ThumbsError(
            f"dataset '{name}' is not in the local datasets cache {where}",
            file=name,
            hint=f"fetch it once with python -c \"import datasets; datasets.load_dataset('{name}')\" "
            "on a machine with network access, or give a file or a save_to_disk folder",
        ) from None
    except Exception as err:  # the Hub client's own errors (offline, gated, not found)
        if type(err).__module__.startswith(("huggingface_hub", "datasets", "requests", "httpx")):
            raise ThumbsError(
                f"cannot load dataset '{name}': {str(err).splitlines()[0]}", file=name
            ) from None
        raise


def _one_split(loaded, split: str | None, source: str):
    """A Dataset as it is; from a DatasetDict the ``split`` asked for, else its only split or train."""
    import datasets

    if not isinstance(loaded, (datasets.DatasetDict, dict)):
        return loaded
    names = list(loaded)
    for choice in (split, "train") if split else ("train",):
        if choice in loaded:
            return loaded[choice]
    if len(names) == 1:
        return loaded[names[0]]
    raise ThumbsError(
        f"the dataset has splits {', '.join(names)} and none is '{split or 'train'}'",
        file=source,
        hint=f"name one: hf:ID:{names[0]}, or save that split alone with save_to_disk",
    )


def _table(dataset) -> pa.Table:
    return dataset.with_format("arrow")[:] if len(dataset) else dataset.data.table.slice(0, 0)


def conversational(table: pa.Table, source: str) -> pa.Table:
    """TRL's conversational columns (lists of messages) as thumbs' prompt/completion text."""
    lists = [c for c in ("prompt", *COMPLETIONS) if c in table.column_names and _is_list(table[c].type)]
    if not lists:
        return table
    columns = {c: table[c].to_pylist() for c in lists}
    n = table.num_rows
    prompts = columns.get("prompt") or (
        table["prompt"].to_pylist() if "prompt" in table.column_names else None
    )
    if prompts is None and {"chosen", "rejected"} <= set(columns):  # TRL's implicit prompt
        prompts = [_common_prefix(c, r) for c, r in zip(columns["chosen"], columns["rejected"])]
        columns["chosen"] = [c[len(p) :] for c, p in zip(columns["chosen"], prompts)]
        columns["rejected"] = [r[len(p) :] for r, p in zip(columns["rejected"], prompts)]
    if prompts is None:
        return table  # the missing prompt column is reported by the checks that follow
    out = {}
    completions = [c for c in COMPLETIONS if c in columns]
    new_prompts = []
    for i in range(n):
        prompt = prompts[i]
        parsed = as_messages(prompt)  # a list, or JSON text of one (a JSONL chat prompt)
        messages = [_message(m, source, i, "prompt") for m in parsed] if parsed is not None else None
        if not completions:
            new_prompts.append(json.dumps(messages, ensure_ascii=False) if messages is not None else prompt)
            continue
        heads = []
        for name in completions:
            head, text = _split_completion(columns[name][i], source, i, name)
            heads.append(head)
            out.setdefault(name, []).append(text)
        if any(h != heads[0] for h in heads):
            raise ThumbsError("chosen and rejected continue the prompt differently", file=source, row=i + 1)
        if heads[0] and messages is None:  # a text prompt followed by messages: the prompt is the user's
            messages = [{"role": "user", "content": prompt}]
        if messages is not None:
            messages = messages + heads[0]
        new_prompts.append(json.dumps(messages, ensure_ascii=False) if messages is not None else prompt)
    out["prompt"] = new_prompts
    for name, values in out.items():
        array = pa.array(values, pa.string())
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, array)
        else:
            table = table.append_column(name, array)
    return table


def _split_completion(value, source: str, row: int, field: str) -> tuple[list[dict], str | None]:
    """A completion as (messages that extend the prompt, the text of the final assistant message)."""
    if value is None or isinstance(value, str):
        return [], value
    messages = [_message(m, source, row, field) for m in value]
    if not messages or messages[-1]["role"] != "assistant":
        raise ThumbsError(
            "a conversational completion must end with an assistant message",
            file=source,
            row=row + 1,
            field=field,
            hint="TRL's format: completion = [{'role': 'assistant', 'content': ...}]",
        )
    return messages[:-1], messages[-1]["content"]


def _message(message, source: str, row: int, field: str) -> dict:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ThumbsError("a message needs a 'role' and a 'content'", file=source, row=row + 1, field=field)
    content = message.get("content")
    if not isinstance(content, str):
        raise ThumbsError(
            f"message content must be text, got {type(content).__name__}",
            file=source,
            row=row + 1,
            field=field,
        )
    extra = {k: v for k, v in message.items() if k not in ("role", "content") and v is not None}
    return {"role": message["role"], "content": content, **extra}


def _common_prefix(chosen: list, rejected: list) -> list:
    prefix = []
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        prefix.append(a)
    return prefix


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind)


@contextmanager
def _offline():
    """Hub access off for the block: the env for what loads now, the constants for what is loaded."""
    import datasets.config
    import huggingface_hub.constants as hub

    saved = (os.environ.get("HF_HUB_OFFLINE"), hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[0]
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved[1], saved[2]


@contextmanager
def _quiet_datasets():
    from thumbs.quiet import quiet

    with quiet():
        yield


@contextmanager
def _nullcontext():
    yield
