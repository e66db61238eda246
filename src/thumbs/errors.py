"""One exception type for problems a user can fix, printed without a traceback by the CLI."""

from __future__ import annotations


class ThumbsError(Exception):
    """A problem with the user's input or config: says what, where, and what to do.

    ``where`` is the file (and row/field when known); ``hint`` is the action to take.
    """

    def __init__(
        self,
        what: str,
        *,
        file: str | None = None,
        row: int | str | None = None,
        field: str | None = None,
        hint: str | None = None,
    ):
        self.what, self.file, self.row, self.field, self.hint = what, file, row, field, hint
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        text = (", ".join(where) + ": " if where else "") + self.what
        if self.hint:
            text += f"\n  → {self.hint}"
        return text
