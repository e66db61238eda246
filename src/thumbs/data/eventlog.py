"""Event logs: generations in one table, feedback events in another, joined by a generation id.

Per generation and voter (``user_id``; anonymous votes on a generation count as one voter), the
feedback events form a history ordered by time (then by position in the log). The last event
decides: a vote is kept, a neutral vote counts as neutral, a retraction removes the vote. A
retraction is an event type (``retract``, ``unvote``, ``delete``…) or a vote value the ingest's
``--retract-values`` names (default: ``retract``, ``unvote``, ``clear``, ``none``…). Every
earlier event is ``superseded`` (counted with the duplicates) or, under a retraction,
``retracted`` (counted with the neutral rows). A regenerate event is a thumbs-down only with
``--regenerate-as-down``; otherwise it is ``regenerate_ignored`` (neutral) and replaces nothing.

Rows in: every feedback event, plus every generation row that could not be read (quarantined,
since votes on it are lost). Generations nobody voted on are not votes and are not counted.
"""

from __future__ import annotations

# outcome of a row -> the manifest counter it adds to
COUNTED_AS = {
    "event": "rows_ok",
    "duplicate": "rows_duplicate",  # the same event_id as one kept before it
    "quarantined": "rows_quarantined",
    "neutral": "rows_neutral",
    "superseded": "rows_duplicate",
    "retracted": "rows_neutral",
    "retraction": "rows_neutral",
    "regenerate_ignored": "rows_neutral",
}


def outcome_sql() -> str:
    """Outcome of a row of a flat or chat source."""
    return "CASE WHEN reason IS NOT NULL THEN 'quarantined' WHEN vote = 'neutral' THEN 'neutral' ELSE 'event' END"


def join(con, generations: str, feedback: str, out: str) -> dict:
    """Create ``out`` (candidate columns plus ``outcome``) from classified generations and feedback.

    Returns counts for the manifest's detail: generations read, unvoted, and with a repeated id.
    """
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _thumbs_gens AS
        SELECT generation_id, prompt, completion, user_id, ts, conversation_id, meta,
               count(*) OVER (PARTITION BY generation_id) AS copies
        FROM {generations} WHERE reason IS NULL
        QUALIFY row_number() OVER (PARTITION BY generation_id ORDER BY file, row) = 1"""
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {out} AS
        WITH joined AS (
            SELECT f.file, f.row, f.raw, f.raw_bytes, f.raw_truncated, f.vote, f.weight, f.event, f.vote_key,
                coalesce(f.reason, CASE WHEN g.generation_id IS NULL THEN 'unknown_generation' END) AS reason,
                coalesce(f.detail, CASE WHEN g.generation_id IS NULL
                    THEN 'generation ' || to_json(f.generation_id) || ' is not among the generations' END) AS detail,
                f.generation_id, g.prompt, g.completion,
                coalesce(f.user_id, g.user_id) AS user_id, coalesce(f.ts, g.ts) AS ts,
                coalesce(f.conversation_id, g.conversation_id) AS conversation_id,
                CASE WHEN g.meta IS NULL THEN f.meta WHEN f.meta IS NULL THEN g.meta
                     ELSE json_merge_patch(g.meta, f.meta)::VARCHAR END AS meta
            FROM {feedback} f LEFT JOIN _thumbs_gens g ON f.generation_id = g.generation_id),
        flagged AS (
            SELECT *, reason IS NULL AND NOT (event = 'regenerate' AND vote = 'neutral') AS counts FROM joined),
        history AS (
            SELECT *, row_number() OVER voter AS recency, first(event) OVER voter AS last_event
            FROM flagged
            WINDOW voter AS (PARTITION BY counts, generation_id, coalesce(user_id, '')
                             ORDER BY ts DESC NULLS LAST, file DESC, row DESC))
        SELECT file, row, reason, detail, CASE WHEN reason IS NOT NULL THEN raw END AS raw,
            CASE WHEN reason IS NOT NULL THEN raw_bytes END AS raw_bytes,
            CASE WHEN reason IS NOT NULL THEN raw_truncated END AS raw_truncated,
            prompt, completion, vote, user_id, ts, weight, conversation_id, generation_id, vote_key, event, meta,
            CASE WHEN reason IS NOT NULL THEN 'quarantined'
                 WHEN NOT counts THEN 'regenerate_ignored'
                 WHEN recency = 1 AND event = 'retract' THEN 'retraction'
                 WHEN recency = 1 AND vote = 'neutral' THEN 'neutral'
                 WHEN recency = 1 THEN 'event'
                 WHEN last_event = 'retract' THEN 'retracted'
                 ELSE 'superseded' END AS outcome
        FROM history
        UNION ALL
        SELECT file, row, reason, detail, raw, raw_bytes, raw_truncated,
            prompt, completion, NULL, user_id, ts, NULL, conversation_id, generation_id, NULL, NULL, meta, 'quarantined'
        FROM {generations} WHERE reason IS NOT NULL"""
    )
    read, voted, repeated = con.execute(
        f"""SELECT (SELECT count(*) FROM {generations} WHERE reason IS NULL),
                   (SELECT count(DISTINCT generation_id) FROM {out} WHERE outcome <> 'quarantined'),
                   (SELECT count(*) FROM _thumbs_gens WHERE copies > 1)"""
    ).fetchone()
    con.execute("DROP TABLE _thumbs_gens")
    return {
        "generations_read": read,
        "generations_unvoted": read - voted,
        "generation_ids_repeated": repeated,
    }
