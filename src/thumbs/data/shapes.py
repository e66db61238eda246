"""Staged rows → candidate events: which field is which, then one query that checks every row.

A field is found under its canonical name, one of a few common aliases (:data:`ALIASES`), or
where ``--map FIELD=COLUMN`` points (``COLUMN`` may be a dotted path into nested JSON). Each
shape is a set of SQL expressions over those fields:

- ``flat``: prompt (text, or a list of chat messages), completion, label.
- ``chat``: ``messages`` (OpenAI style) with the vote on one assistant message, at ``vote_index``
  (0-based; negative counts from the end) or else the last assistant message; the prompt is
  every message before it.
- ``generations`` / ``feedback``: the two halves of an event log (see :mod:`thumbs.data.eventlog`).

The result (``classify``) has one row per input row: either a ``reason`` (a stable code, with a
``detail`` for people and the raw row, cut at :data:`RAW_KEEP` characters) or the canonical
values and a ``vote`` of 'up', 'down' or 'neutral'.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from thumbs.data.signals import RETRACT_VALUES, Scale, number_sql, vote_sql, word_sql
from thumbs.errors import ThumbsError

ALIASES = {
    "prompt": ("prompt", "input", "question", "query", "instruction"),
    "completion": ("completion", "response", "output", "answer", "reply"),
    "label": (
        "label",
        "vote",
        "thumbs",
        "rating",
        "stars",
        "score",
        "feedback",
        "reaction",
        "liked",
        "value",
    ),
    "messages": ("messages",),
    "vote_index": ("vote_index", "message_index", "turn_index"),
    "user_id": ("user_id", "user", "userId", "uid"),
    "timestamp": ("timestamp", "ts", "time", "created_at", "createdAt", "voted_at"),
    "weight": ("weight",),
    "conversation_id": ("conversation_id", "conversationId", "thread_id", "session_id", "chat_id"),
    "generation_id": ("generation_id", "generationId", "response_id", "completion_id", "message_id"),
    "event": ("event", "event_type", "action", "type"),
    "vote_key": (),  # set by builtin sources only: tells apart identical anonymous votes
}
VOTE_FIELDS = ("label", "user_id", "timestamp", "weight", "conversation_id", "vote_key")
FIELDS_OF = {
    "flat": ("prompt", "completion", *VOTE_FIELDS),
    "chat": ("messages", "vote_index", *VOTE_FIELDS),
    "generations": (
        "generation_id",
        "prompt",
        "completion",
        "messages",
        "user_id",
        "timestamp",
        "conversation_id",
    ),
    "feedback": ("generation_id", "label", "event", "user_id", "timestamp", "weight", "conversation_id"),
}
FIELDS = tuple(n for n in ALIASES if n != "vote_key")  # what --map may name
REQUIRED = {"flat": ("prompt", "completion", "label"), "chat": ("messages", "label")}
REQUIRED |= {"generations": ("generation_id",), "feedback": ("generation_id",)}
RAW_KEEP = 65_536  # characters of a quarantined row kept in quarantine.jsonl


@dataclass
class Plan:
    """How to read one staged table: its shape, where each field is, and how votes map."""

    shape: str
    mapping: dict[str, str] = field(default_factory=dict)  # canonical field -> column or dotted path
    scale: Scale | None = None
    regenerate_as_down: bool = False
    max_row_bytes: int = 4 << 20
    meta_keys: list[str] | None = None  # the unmapped columns, when known; else meta by JSON patch
    retract_values: tuple[str, ...] = RETRACT_VALUES  # feedback: vote values that take a vote back


def object_keys(con, staged: str) -> dict[str, int]:
    """Top-level keys of the rows that are JSON objects, with how many rows carry each."""
    rows = con.execute(
        f"SELECT k, count(*) FROM (SELECT unnest(json_keys(raw)) AS k FROM {staged} WHERE err IS NULL AND json_valid(raw)) "
        "GROUP BY k ORDER BY k"
    ).fetchall()
    return dict(rows)


def resolve(
    shape: str, keys: dict[str, int], explicit: dict[str, str], where: str
) -> tuple[str, dict[str, str]]:
    """The shape (``auto`` is decided here) and where each of its fields lives.

    ``--map`` names a field of no shape, or a column that no row has, fail with a hint.
    """
    for name in explicit:
        if name not in FIELDS:
            raise ThumbsError(
                f"--map {name}=...: unknown field '{name}'", hint=f"map one of {', '.join(FIELDS)}"
            )

    def find(name: str) -> str | None:
        return explicit.get(name) or next((a for a in ALIASES[name] if a in keys), None)

    if shape == "auto":
        shape = "chat" if find("messages") and not find("completion") else "flat"
    extra = {"generation_id": ("id",)} if shape == "generations" else {}
    mapping = {}
    for name in FIELDS_OF[shape]:
        column = find(name) or next((a for a in extra.get(name, ()) if a in keys), None)
        if column is None:
            continue
        if name in explicit and keys and column.split(".")[0] not in keys:
            raise ThumbsError(
                f"--map {name}={column}: no column '{column.split('.')[0]}' here (found: {', '.join(keys)})",
                file=where,
                hint="check the column name",
            )
        mapping[name] = column
    return shape, mapping


def _path(column: str, *, nested: bool = True) -> str:
    """JSON path of a column; with ``nested`` a dotted name walks into objects."""
    parts = column.split(".") if nested else [column]
    return "$" + "".join('."' + part.replace('"', '\\"') + '"' for part in parts)


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _meta_patch(mapping: dict[str, str]) -> str:
    """A JSON merge patch that deletes the mapped columns, leaving the unmapped ones as ``meta``."""
    patch: dict = {}
    for column in mapping.values():
        node, parts = patch, column.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if node is None:
                break
        else:
            node[parts[-1]] = None
    return json.dumps(patch, ensure_ascii=False)


OUTPUT = {
    "prompt": "NULL::VARCHAR",
    "completion": "NULL::VARCHAR",
    "vote": "NULL::VARCHAR",
    "user_id": "NULL::VARCHAR",
    "ts": "NULL::TIMESTAMPTZ",
    "weight": "1.0::DOUBLE",
    "conversation_id": "NULL::VARCHAR",
    "generation_id": "NULL::VARCHAR",
    "vote_key": "NULL::VARCHAR",
    "event": "NULL::VARCHAR",
    "label_number": "NULL::DOUBLE",
}
RETRACT = ("retract", "retraction", "retracted", "unvote", "undo", "remove", "removed", "delete", "clear")
REGENERATE_EVENTS = ("regenerate", "regenerated", "regen", "retry")
SCALAR = "'VARCHAR', 'BIGINT', 'UBIGINT', 'DOUBLE'"
CHAT = "STRUCT(role VARCHAR, content VARCHAR)[]"


def classify(con, staged: str, out: str, plan: Plan) -> None:
    """Create ``out``: every staged row with its ``reason`` or its canonical values (see the module doc).

    The query is a chain of layers (each a ``SELECT *, <columns> FROM`` the one before), so that a
    value is computed once and every check is a plain condition on columns. The JSON of a row is
    parsed once for all its fields; details are written for the lost rows only.
    """
    fields = [n for n in FIELDS_OF[plan.shape] if n in plan.mapping]
    meta_keys = plan.meta_keys or []
    paths = [_path(plan.mapping[n]) for n in fields] + [_path(k, nested=False) for k in meta_keys]
    path_list = ", ".join(map(_sql_text, paths)) or "'$'"
    j = {n: "NULL::JSON" for n in FIELDS_OF[plan.shape]} | {n: f"f[{i + 1}]" for i, n in enumerate(fields)}
    t = {n: "NULL::VARCHAR" for n in FIELDS_OF[plan.shape]} | {n: f"t_{n}" for n in fields}
    layers, checks = _shape_sql(plan, j, t)
    reason = " ".join(f"WHEN {cond} THEN '{code}'" for cond, code, _ in checks)
    detail = " ".join(f"WHEN {cond} THEN {text}" for cond, _, text in checks)
    chain = [
        f"""SELECT file, row, raw, nbytes, CASE
            WHEN nbytes > {plan.max_row_bytes} THEN 'too_large'
            WHEN err IS NOT NULL THEN err
            WHEN NOT json_valid(raw) THEN 'malformed_json'
            WHEN NOT starts_with(ltrim(raw), '{{') THEN 'not_an_object' END AS early FROM {staged}""",
        f"SELECT *, CASE WHEN early IS NULL THEN json_extract(raw, [{path_list}]) END AS f FROM layer0",
    ]
    types = {f"t_{n}": f"json_type({j[n]})" for n in fields}  # each field's JSON type, found once
    for layer in [
        layer for layer in (types, *layers, {"reason": f"coalesce(early, CASE {reason} END)"}) if layer
    ]:
        columns = ", ".join(f"{sql} AS {name}" for name, sql in layer.items())
        chain.append(f"SELECT *, {columns} FROM layer{len(chain) - 1}")
    ctes = ",\n".join(f"layer{i} AS ({sql})" for i, sql in enumerate(chain))
    produced = {name for layer in layers for name in layer}
    # a feedback row may still be lost later (unknown generation), so it keeps its raw text
    keep_raw = "true" if plan.shape == "feedback" else "reason IS NOT NULL"
    # values of a quarantined row are left as computed: nothing downstream reads them
    canonical = ", ".join(
        f"{name if name in produced else default} AS {name}" for name, default in OUTPUT.items()
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {out} AS WITH {ctes}
        SELECT file, row, reason,
            CASE WHEN early IS NOT NULL THEN {_early_detail(plan)} WHEN reason IS NOT NULL THEN CASE {detail} END END AS detail,
            CASE WHEN {keep_raw} THEN left(raw, {RAW_KEEP}) END AS raw,
            CASE WHEN {keep_raw} THEN nbytes END AS raw_bytes,
            CASE WHEN {keep_raw} THEN length(raw) > {RAW_KEEP} OR strlen(raw) < nbytes END AS raw_truncated,
            {canonical},
            CASE WHEN reason IS NULL THEN {_meta_sql(plan, len(fields))} END AS meta
        FROM layer{len(chain) - 1}"""
    )


def _meta_sql(plan: Plan, first: int) -> str:
    """``meta``: the unmapped columns of a row as a JSON object (NULL when there are none)."""
    if plan.meta_keys is None:
        return f"nullif(json_merge_patch(raw, {_sql_text(_meta_patch(plan.mapping))})::VARCHAR, '{{}}')"
    if not plan.meta_keys:
        return "NULL::VARCHAR"
    values = [(_sql_text(k), f"f[{first + i + 1}]") for i, k in enumerate(plan.meta_keys)]
    entries = ", ".join(f"{{'k': {k}, 'v': {v}}}" for k, v in values)
    some = f"nullif(to_json(map_from_entries(list_filter([{entries}], lambda e: e.v IS NOT NULL)))::VARCHAR, '{{}}')"
    every = " AND ".join(f"{v} IS NOT NULL" for _, v in values)  # the usual row: all present, no filtering
    return f"CASE WHEN {every} THEN json_object({', '.join(f'{k}, {v}' for k, v in values)})::VARCHAR ELSE {some} END"


def _early_detail(plan: Plan) -> str:
    return f"""CASE early
        WHEN 'too_large' THEN 'row of ' || nbytes || ' bytes is over the limit of {plan.max_row_bytes} (--max-row-bytes)'
        WHEN 'invalid_utf8' THEN 'not valid UTF-8 (raw shows the bad bytes as \\xNN)'
        WHEN 'malformed_json' THEN 'not valid JSON'
        WHEN 'not_an_object' THEN 'valid JSON, but not an object'
        WHEN 'malformed_row' THEN 'the CSV reader rejected this record (column count or quoting)' END"""


def _shape_sql(
    plan: Plan, j: dict[str, str], t: dict[str, str]
) -> tuple[list[dict[str, str]], list[tuple[str, str, str]]]:
    """Layers of named SQL columns, and ordered checks (condition, reason code, detail) over them.

    ``j`` holds each field's JSON value, ``t`` its JSON type (both SQL expressions).
    """
    m, shape = plan.mapping, plan.shape
    pre: dict[str, str] = {}
    parsed: dict[str, str] = {}
    chat: dict[str, str] = {}
    indexed: dict[str, str] = {}
    values: dict[str, str] = {}
    checks: list[tuple[str, str, str]] = []

    def name_of(name: str) -> str:  # quoted for use inside an SQL string literal
        return (f"field '{m[name]}' ({name})" if name in m else f"field '{name}'").replace("'", "''")

    def require(name: str, cond: str | None = None) -> None:
        missing = cond or f"coalesce({t[name]}, 'NULL') = 'NULL'"
        text = (
            f"{name_of(name)} is missing"
            if name in m
            else f"no ''{name}'' field; map one with --map {name}=COLUMN"
        )
        checks.append((missing, "missing_field", f"'{text}'"))

    def typed(name: str, types: str, what: str) -> None:
        cond = f"{t[name]} NOT IN ('NULL', {types})"
        checks.append((cond, "wrong_type", f"'{name_of(name)} should be {what}, got ' || lower({t[name]})"))

    for name in ("prompt", "completion", "messages", "generation_id"):
        if name in REQUIRED[shape]:
            require(name)
    if "label" in j:
        pre["label_word"] = word_sql(j["label"], t["label"])
        parsed["label_number"] = number_sql(j["label"], t["label"], "label_word")
        values["vote"] = vote_sql(
            "label_word", "label_number", plan.scale, regenerate_as_down=plan.regenerate_as_down
        )
    if shape == "feedback":  # retractions carry no vote; a regenerate is a vote only when asked for
        event = f"lower(thumbs_scalar({j['event']}, {t['event']}))"
        # a retraction is an event type, or a vote value the plan names (its text: 'none', '0', 'false')
        by_value = "false"
        if "label" in j and plan.retract_values:
            by_value = f"coalesce(lower(trim({j['label']}->>'$')) IN ({_words(plan.retract_values)}), false)"
        parsed["event"] = (
            f"CASE WHEN {event} IN ({_words(RETRACT + plan.retract_values)}) OR {by_value} THEN 'retract' "
            f"WHEN {event} IN ({_words(REGENERATE_EVENTS)}) THEN 'regenerate' ELSE 'vote' END"
        )
        regenerate = "'down'" if plan.regenerate_as_down else "'neutral'"
        values["vote"] = (
            f"CASE event WHEN 'vote' THEN {values['vote']} WHEN 'regenerate' THEN {regenerate} END"
        )
    if "label" in j:
        voting = "event = 'vote' AND " if shape == "feedback" else ""
        require("label", f"{voting}vote = 'missing'")
        checks.append(
            (
                f"{voting}vote = 'wrong_type'",
                "wrong_type",
                f"'{name_of('label')} holds ' || {_shown(j['label'])}",
            )
        )
    if shape in ("flat", "generations"):
        typed("prompt", "'VARCHAR', 'ARRAY'", "text or a list of chat messages")
        typed("completion", "'VARCHAR'", "text")
        is_list = f"{t['prompt']} = 'ARRAY'"
        pre["prompt_fast"] = f"CASE WHEN {is_list} THEN thumbs_fast({j['prompt']}) END"
        parsed["prompt_simple"] = f"CASE WHEN {is_list} THEN thumbs_simple({j['prompt']}, prompt_fast) END"
        chat["prompt_msgs"] = (
            f"(CASE WHEN {is_list} THEN thumbs_messages({j['prompt']}, prompt_simple, prompt_fast) END)::{CHAT}"
        )
        bad = f"{is_list} AND thumbs_bad_chat(prompt_msgs)"
        checks.append((bad, "wrong_type", "'prompt messages need a role and text content'"))
        values["prompt"] = (
            f"CASE WHEN {is_list} THEN thumbs_chat(prompt_msgs, prompt_simple) ELSE {j['prompt']}->>'$' END"
        )
        values["completion"] = f"CASE WHEN {t['completion']} = 'VARCHAR' THEN {j['completion']}->>'$' END"
    if shape in ("chat", "generations"):
        typed("messages", "'ARRAY'", "a list of chat messages")
        is_list = f"{t['messages']} = 'ARRAY'"
        pre["fast"] = f"CASE WHEN {is_list} THEN thumbs_fast({j['messages']}) END"
        parsed["simple"] = f"CASE WHEN {is_list} THEN thumbs_simple({j['messages']}, fast) END"
        chat["msgs"] = (
            f"(CASE WHEN {is_list} THEN thumbs_messages({j['messages']}, simple, fast) END)::{CHAT}"
        )
        indexed["turn"] = _vote_index(j, t)
        as_chat = "true" if shape == "chat" else f"({is_list} AND {j['completion']} IS NULL)"
        checks.append(
            (f"{as_chat} AND thumbs_bad_chat(msgs)", "wrong_type", "'messages need a role and text content'")
        )
        turn_ok = "coalesce(turn BETWEEN 1 AND len(msgs) AND msgs[turn].role = 'assistant', false)"
        checks.append(
            (f"{as_chat} AND NOT {turn_ok}", "bad_turn", "'no assistant message at the voted turn'")
        )
        chat_prompt, chat_completion = "thumbs_chat(msgs[1:turn - 1], simple)", "msgs[turn].content"
        if shape == "chat":
            values["prompt"], values["completion"] = chat_prompt, chat_completion
        else:  # a generation is prompt + completion, or a chat ending in its answer
            for name in ("prompt", "completion"):
                require(name, f"NOT {as_chat} AND coalesce({t[name]}, 'NULL') = 'NULL'")
            values["prompt"] = f"CASE WHEN {as_chat} THEN {chat_prompt} ELSE {values['prompt']} END"
            values["completion"] = (
                f"CASE WHEN {as_chat} THEN {chat_completion} ELSE {values['completion']} END"
            )
    for name in ("user_id", "conversation_id", "generation_id"):
        if name in j:
            typed(name, SCALAR, "text or a number")
            values[name] = f"thumbs_scalar({j[name]}, {t[name]})"
    if "weight" in j:
        parsed["weight"] = (
            f"coalesce(TRY_CAST({j['weight']}->>'$' AS DOUBLE), CASE WHEN coalesce({t['weight']}, 'NULL') = 'NULL' THEN 1.0 END)"
        )
        checks.append(
            (
                "NOT coalesce(weight >= 0 AND isfinite(weight), false)",
                "wrong_type",
                f"'{name_of('weight')} should be a number ≥ 0'",
            )
        )
    if "label" in j:
        voting = "event = 'vote' AND " if shape == "feedback" else ""
        checks.append(
            (
                f"{voting}vote = 'bad'",
                "bad_label",
                f"'{name_of('label')}: ' || {_shown(j['label'])} || ' is not a known vote'",
            )
        )
    if "prompt" in values:
        checks.append(("thumbs_blank(completion)", "empty_completion", "'the completion is empty'"))
        checks.append(("prompt = '[]' OR thumbs_blank(prompt)", "empty_prompt", "'the prompt is empty'"))
        checks.append(
            ("prompt IS NULL OR completion IS NULL", "wrong_type", "'prompt or completion could not be read'")
        )
    if "timestamp" in j:
        values["ts"] = f"thumbs_time({j['timestamp']}, {t['timestamp']})"
        bad = f"{t['timestamp']} <> 'NULL' AND ts IS NULL"
        checks.append(
            (
                bad,
                "bad_timestamp",
                f"'{name_of('timestamp')}: ' || {_shown(j['timestamp'])} || ' is not a time'",
            )
        )
    if "vote_key" in j:
        values["vote_key"] = f"thumbs_scalar({j['vote_key']}, {t['vote_key']})"
    return [layer for layer in (pre, parsed, chat, indexed, values) if layer], checks


def _shown(value: str) -> str:
    return f"left({value}::VARCHAR, 80)"


def _words(words: tuple[str, ...]) -> str:
    return ", ".join(_sql_text(w) for w in words)


def _vote_index(j: dict[str, str], t: dict[str, str]) -> str:
    """1-based position of the voted message: ``vote_index`` (0-based, negative from the end), else the last assistant."""
    last = "len(msgs) + 1 - list_position(list_reverse(list_transform(msgs, lambda m: m.role)), 'assistant')"
    if j.get("vote_index", "NULL::JSON") == "NULL::JSON":
        return last
    given = f"TRY_CAST({j['vote_index']}->>'$' AS BIGINT)"
    return f"CASE WHEN coalesce({t['vote_index']}, 'NULL') = 'NULL' THEN {last} WHEN {given} < 0 THEN len(msgs) + 1 + {given} ELSE {given} + 1 END"
