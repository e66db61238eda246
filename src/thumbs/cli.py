"""`thumbs ingest · audit · train · eval · compare · iterate · study · demo`.

Each command lives beside the code it drives (``<module>:<name>_command``) and is registered here.
Modules keep heavy imports (torch, transformers) inside functions so that ``thumbs --help`` is fast.
"""

from __future__ import annotations

import functools
import importlib
import sys

import typer

from thumbs.errors import ThumbsError
from thumbs.quiet import quiet

app = typer.Typer(
    name="thumbs",
    help="Turn thumbs-up/down feedback into a better model: ingest, audit, train, eval, compare.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Turn thumbs-up/down feedback into a better model."""


COMMANDS = [
    ("ingest", "thumbs.data.ingest:ingest_command"),
    ("audit", "thumbs.audit.findings:audit_command"),
    ("train", "thumbs.train.loop:train_command"),
    ("eval", "thumbs.eval.evaluation:eval_command"),
    ("compare", "thumbs.report.compare:compare_command"),
    ("iterate", "thumbs.iterate.command:iterate_command"),
    ("study", "thumbs.study.run:study_command"),
    ("demo", "thumbs.demo.command:demo_command"),
]


def _friendly(fn):
    """User errors print as one clear message and exit 2, never as a traceback; Ctrl-C exits 130;
    other libraries' progress bars and warnings the user cannot act on are silenced (``thumbs.quiet``).

    Ingest, audit and eval write their outputs whole or not at all, so an interrupted one leaves
    them as they were; train saves a checkpoint first and says so.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with quiet():
                return fn(*args, **kwargs)
        except ThumbsError as err:
            typer.secho(f"error: {err.message}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.secho("thumbs: interrupted (Ctrl-C)", fg=typer.colors.RED, err=True)
            raise typer.Exit(130) from None

    return wrapper


for _name, _target in COMMANDS:
    _module, _attr = _target.split(":")
    try:
        _fn = getattr(importlib.import_module(_module), _attr)
    except (ImportError, AttributeError) as _err:  # a command still being built
        if "pytest" not in sys.modules:
            print(f"thumbs: command '{_name}' unavailable ({_err})", file=sys.stderr)
        continue
    app.command(_name)(_friendly(_fn))


def main() -> None:
    app()
