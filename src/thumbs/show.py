"""Numbers and tables for people: one formatting rule and one console, for every command."""

from __future__ import annotations

from typing import Any


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=120)  # logs and pipes: do not squeeze to 80
