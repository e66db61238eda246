"""Votes as logged → thumbs up, thumbs down, or neutral, as one SQL expression over a JSON value.

Booleans, ``up``/``down``, 👍/👎, likes, ±1 and numeric ratings all arrive in one field. Words
map directly. Numbers go through a :class:`Scale`: thresholds the user gives
(``--positive-at``/``--negative-at``, inclusive), or one read off the values themselves, which
the manifest records so that nothing is guessed silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from thumbs.errors import ThumbsError

UP = ("up", "thumbs_up", "thumbsup", "thumbs up", "thumbs-up", "+1", ":+1:", ":thumbsup:", "true", "yes", "y")
UP += ("like", "liked", "good", "positive", "pos", "helpful", "accept", "accepted", "upvote", "✅")
DOWN = (
    "down",
    "thumbs_down",
    "thumbsdown",
    "thumbs down",
    "thumbs-down",
    ":-1:",
    ":thumbsdown:",
    "false",
    "no",
)
DOWN += (
    "n",
    "dislike",
    "disliked",
    "bad",
    "negative",
    "neg",
    "unhelpful",
    "reject",
    "rejected",
    "downvote",
    "❌",
)
NEUTRAL = ("neutral", "none", "meh", "skip", "skipped", "n/a", "mixed")
REGENERATE = ("regenerate", "regenerated", "regen", "retry")
# In an event log, a vote VALUE that takes back the voter's earlier vote (``--retract-values``).
RETRACT_VALUES = ("retract", "retracted", "retraction", "unvote", "unvoted", "undo", "clear", "cleared")
RETRACT_VALUES += ("remove", "removed", "delete", "deleted", "unset", "none")
NUMERIC = ("BIGINT", "UBIGINT", "DOUBLE")


@dataclass(frozen=True)
class Scale:
    """How a number becomes a vote: up at or above ``up_at``, down at or below ``down_at``.

    ``strict`` compares with > and < instead (the signed scale: positive up, negative down, 0 neutral).
    """

    name: str
    up_at: float
    down_at: float
    strict: bool = False

    def sql(self, x: str) -> str:
        up, down = (">", "<") if self.strict else (">=", "<=")
        return (
            f"CASE WHEN NOT isfinite({x}) THEN 'bad' WHEN {x} {up} {self.up_at!r} THEN 'up' "
            f"WHEN {x} {down} {self.down_at!r} THEN 'down' ELSE 'neutral' END"
        )

    def describe(self) -> dict:
        up, down = (">", "<") if self.strict else ("≥", "≤")
        return {
            "scale": self.name,
            "rule": f"up {up} {self.up_at:g}, down {down} {self.down_at:g}, else neutral",
        }


SIGNED = Scale("signed", 0.0, 0.0, strict=True)


def user_scale(positive_at: float | None, negative_at: float | None) -> Scale | None:
    """The scale the user asked for, or None; one threshold alone splits the line in two."""
    if positive_at is None and negative_at is None:
        return None
    if positive_at is not None and negative_at is not None:
        if negative_at >= positive_at:
            raise ThumbsError(
                f"--negative-at ({negative_at:g}) must be below --positive-at ({positive_at:g})",
                hint="values between the two are neutral",
            )
        return Scale("thresholds", positive_at, negative_at)
    if positive_at is not None:
        return Scale("thresholds", positive_at, math.nextafter(positive_at, -math.inf))
    return Scale("thresholds", math.nextafter(negative_at, math.inf), negative_at)


def detect_scale(low: float | None, high: float | None, binary: bool, where: str, field: str) -> Scale | None:
    """A scale for numbers seen between ``low`` and ``high`` (``binary``: only 0 and 1), or a user error."""
    if low is None:
        return None
    if binary:
        return Scale("binary 0/1", 1.0, 0.0)
    if low < 0:
        return SIGNED
    if high <= 5:
        return Scale("stars 0-5", 4.0, 2.0)
    if high <= 10:
        return Scale("points 0-10", 7.0, 4.0)
    raise ThumbsError(
        f"numeric votes from {low:g} to {high:g}: no built-in scale fits",
        file=where,
        field=field,
        hint="say where thumbs-up and thumbs-down start with --positive-at X --negative-at Y",
    )


def retract_values(value) -> tuple[str, ...]:
    """``--retract-values``: comma-separated words (or a list); None gives the defaults, "" none at all."""
    if value is None:
        return RETRACT_VALUES
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ThumbsError(f"--retract-values {value!r}: expected words separated by commas")
    return tuple(dict.fromkeys(w for w in (str(item).strip().lower() for item in items) if w))


def _words(words: tuple[str, ...]) -> str:
    return ", ".join("'" + w.replace("'", "''") + "'" for w in words)


def word_sql(v: str, t: str) -> str:
    """The JSON value ``v`` as a lower-case word: a string trimmed, ``true``/``false``, else ``<TYPE>``."""
    return (
        f"CASE {t} WHEN 'VARCHAR' THEN lower(trim({v}->>'$')) WHEN 'BOOLEAN' THEN {v}::VARCHAR "
        f"ELSE '<' || {t} || '>' END"
    )


def number_sql(v: str, t: str, word: str) -> str:
    """The JSON value ``v`` as a DOUBLE when it is a number or a numeric string, else NULL."""
    return (
        f"CASE WHEN {t} IN ({_words(NUMERIC)}) THEN TRY_CAST({v}::VARCHAR AS DOUBLE) "
        f"WHEN {t} = 'VARCHAR' AND {word} NOT IN ({_words(UP + DOWN)}) THEN TRY_CAST({word} AS DOUBLE) END"
    )


def vote_sql(word: str, number: str, scale: Scale | None, *, regenerate_as_down: bool) -> str:
    """SQL giving 'up', 'down', 'neutral', 'missing', 'wrong_type' or 'bad' for a vote.

    Without a ``scale``, numbers give 'numeric', for :func:`resolve_numeric` to settle.

    ``word`` and ``number`` are the columns holding :func:`word_sql` and :func:`number_sql` of
    the vote's JSON value (computed once, used many times).
    """
    numeric = scale.sql(number) if scale else "'numeric'"  # resolved by resolve_numeric once all are seen
    return f"""CASE
        WHEN {word} IS NULL OR {word} IN ('', '<NULL>') THEN 'missing'
        WHEN {word} IN ({_words(UP)}) OR starts_with({word}, '👍') THEN 'up'
        WHEN {word} IN ({_words(DOWN)}) OR starts_with({word}, '👎') THEN 'down'
        WHEN {word} IN ({_words(NEUTRAL)}) THEN 'neutral'
        WHEN {word} IN ({_words(REGENERATE)}) THEN {"'down'" if regenerate_as_down else "'neutral'"}
        WHEN {number} IS NOT NULL AND NOT isfinite({number}) THEN 'bad'
        WHEN {number} IS NOT NULL THEN {numeric}
        WHEN {word} IN ('<OBJECT>', '<ARRAY>') THEN 'wrong_type'
        ELSE 'bad'
    END"""


def resolve_numeric(con, table: str, where: str, field: str) -> Scale | None:
    """Settle the 'numeric' votes of ``table`` with the scale their range implies; return it."""
    low, high, binary = con.execute(
        f"SELECT min(label_number), max(label_number), bool_and(label_number IN (0, 1)) FROM {table} WHERE vote = 'numeric'"
    ).fetchone()
    scale = detect_scale(low, high, bool(binary), where, field)
    if scale is not None:
        con.execute(f"UPDATE {table} SET vote = {scale.sql('label_number')} WHERE vote = 'numeric'")
    return scale
