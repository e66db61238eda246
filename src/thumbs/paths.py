"""Where thumbs keeps what it builds once and reuses: converted models, datasets, reference log-probs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$THUMBS_CACHE`` (default ``~/.cache/thumbs``), joined with ``parts`` and created."""
    root = Path(os.environ.get("THUMBS_CACHE") or Path.home() / ".cache" / "thumbs")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
