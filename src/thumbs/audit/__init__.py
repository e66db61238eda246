"""Audit: what the feedback holds (balance, voters, conflicts, noise) and the data options that
answer it (class weights, user balance, aggregation).

Called, this package is the Python API's audit (:func:`audit`), as ``from thumbs import audit``
gives this package once it is loaded.
"""

import sys
from types import ModuleType

from thumbs.audit import findings

__all__ = ["audit"]


def audit(events, **options) -> dict:
    """``thumbs audit``: the audit of an ingest folder, an events file, or an in-memory table
    (``datasets.Dataset``, pandas, pyarrow); options as :func:`thumbs.audit.findings.audit` takes."""
    from thumbs.data.tables import as_table
    from thumbs.quiet import quiet

    table = as_table(events)
    with quiet():
        return findings.audit(events if table is None else table, **options)


class _Package(ModuleType):
    def __call__(self, *args, **kwargs):
        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _Package
