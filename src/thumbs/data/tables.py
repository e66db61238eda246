"""In-memory data sets where a path is taken: a ``datasets.Dataset``, a pandas DataFrame, a
pyarrow Table or a list of row dicts, written as Parquet (named by content) into the output
folder, so that the folder still holds everything it was made from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from thumbs.errors import ThumbsError
from thumbs.quiet import quiet


def ingest(sources, out: str | Path, **options) -> dict:
    """``thumbs ingest SOURCE... --out OUT``; options as :func:`thumbs.data.ingest.ingest` takes them."""
    from thumbs.data.ingest import ingest as run_ingest

    specs = []
    for source in sources if isinstance(sources, (list, tuple)) else [sources]:
        table = as_table(source)
        specs.append(str(source) if table is None else str(write_table(table, Path(out) / "inputs")))
    with quiet():
        return run_ingest(specs, out, **options)


def as_table(data: Any):
    """A pyarrow Table for an in-memory data set (Dataset, DataFrame, Table, list of rows); else None."""
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data
    module = type(data).__module__.split(".")[0]
    if module == "pandas":
        return pa.Table.from_pandas(data, preserve_index=False)
    if module == "datasets":
        import datasets

        if isinstance(data, datasets.DatasetDict):
            if "train" not in data:
                raise ThumbsError(f"a DatasetDict without a 'train' split ({', '.join(data)})",
                                  hint="pass the split itself, e.g. dataset['train_prefs']")  # fmt: skip
            data = data["train"]
        return data.with_format("arrow")[:]
    if isinstance(data, list) and data and all(isinstance(row, dict) for row in data):
        return pa.Table.from_pylist(data)
    return None


def write_table(table, folder: Path) -> Path:
    """The table as Parquet named by its content, so the same data is the same file."""
    import io
    import os

    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    data = buffer.getvalue()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"table-{hashlib.md5(data).hexdigest()[:12]}.parquet"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # whole or not at all
    return path.resolve()
