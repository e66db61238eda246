"""TRL's standard rows, from any source, rewritten in the staging table into the shapes ingest reads.

- A pair (``prompt``, ``chosen``, ``rejected``; or ``chosen``/``rejected`` holding the whole
  conversation, TRL's implicit prompt) is two votes: ``chosen`` up, ``rejected`` down, both with
  the pair's row number. A pair counts as two rows in the manifest.
- A conversational completion (a list of messages ending with the assistant's) becomes a flat
  row: the prompt = the prompt's messages (a text prompt as the user's turn) + the completion's
  earlier ones, the completion = the text of its last message. Other lists are left to be
  quarantined as the wrong type.

Rows of other shapes pass unchanged. One query per rewrite, over the whole table.
"""

from __future__ import annotations

# a text test first, so the usual row (no pair, a text completion) is never parsed as JSON here;
# CASE, because only a row known to be valid JSON may reach the JSON functions
READABLE = "err IS NULL AND json_valid(raw) AND starts_with(ltrim(raw), '{')"
PAIR = f"""(CASE WHEN contains(raw, '"chosen"') AND contains(raw, '"rejected"') AND {READABLE}
    THEN json_exists(raw, '$.chosen') AND json_exists(raw, '$.rejected') ELSE false END)"""
CONVERSATIONAL = f"""(CASE WHEN regexp_matches(raw, '"completion"\\s*:\\s*\\[') AND {READABLE}
    THEN json_type(raw, '$.completion') = 'ARRAY' AND json_type(raw, '$.completion[#-1]') = 'OBJECT'
        AND coalesce(raw->>'$.completion[#-1].role' = 'assistant', false) ELSE false END)"""
PROMPT_MESSAGES = """CASE json_type(raw, '$.prompt')
    WHEN 'ARRAY' THEN CAST(raw->'$.prompt' AS JSON[])
    WHEN 'VARCHAR' THEN [json_object('role', 'user', 'content', raw->>'$.prompt')]
    ELSE []::JSON[] END"""


def rewrite(con, staged: str) -> dict:
    """Rewrite ``staged`` in place; how many pairs and conversational rows were found."""
    pairs, chats = con.execute(  # one pass finds both; the usual source has neither
        f"SELECT count(*) FILTER (WHERE {PAIR}), count(*) FILTER (WHERE {CONVERSATIONAL}) FROM {staged}"
    ).fetchone()
    if pairs:
        half = "json_merge_patch(raw, json_object('completion', raw->'$.{side}', 'label', {up}, " \
               "'chosen', NULL, 'rejected', NULL))::VARCHAR"  # fmt: skip
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE {staged} AS
            SELECT file, row, raw, nbytes, err FROM {staged} WHERE NOT {PAIR}
            UNION ALL SELECT file, row, {half.format(side="chosen", up="true")}, nbytes, err FROM {staged} WHERE {PAIR}
            UNION ALL SELECT file, row, {half.format(side="rejected", up="false")}, nbytes, err FROM {staged} WHERE {PAIR}"""
        )
    if pairs:  # the pairs' conversational halves are new rows: count again
        chats = con.execute(f"SELECT count(*) FROM {staged} WHERE {CONVERSATIONAL}").fetchone()[0]
    if chats:
        earlier = (
            "list_slice(CAST(raw->'$.completion' AS JSON[]), 1, json_array_length(raw, '$.completion') - 1)"
        )
        con.execute(
            f"""UPDATE {staged} SET raw = json_merge_patch(raw, json_object(
                'prompt', to_json(list_concat({PROMPT_MESSAGES}, {earlier})),
                'completion', raw->'$.completion[#-1].content'))::VARCHAR WHERE {CONVERSATIONAL}"""
        )
    return {k: v for k, v in (("pairs", pairs), ("conversational", chats)) if v}
