"""``builtin:vader*``: the VADER human ratings (:mod:`thumbs.data.vader`) as thumbs votes.

One vote per individual rating (−4..+4): up when the rating is above 0, down below 0, and a
rating of 0 is neutral (counted, not kept). The completion is the rated text, the prompt a chat
asking for that kind of text, and ``meta`` holds ``text_id``, ``rating``, ``corpus`` and
``rating_index``. The raters are anonymous, so ``user_id`` is null: ``rating_index`` is only the
rating's position in the text's list, not a person, and the same position on two texts need not
be the same rater. Because anonymous votes on one text would otherwise look like exact
duplicates, each rating's identity includes ``corpus/text_id#rating_index``.
"""

from __future__ import annotations

import pyarrow as pa

from thumbs.data.signals import SIGNED

PROMPTS = {
    "movies": "Write a one-sentence movie review.",
    "amazon": "Write a one-sentence product review.",
    "tweets": "Write a tweet.",
    "nyt": "Write a sentence from a newspaper editorial.",
}
MAPPING = {"prompt": "prompt", "completion": "completion", "label": "label", "vote_key": "vote_key"}
META_KEYS = ("text_id", "rating", "corpus", "rating_index")
SCALE = SIGNED


def stage_vader(con, table: str, corpora: tuple[str, ...]) -> None:
    """Stage every rating of ``corpora`` into ``table`` (loops over texts, not ratings)."""
    from thumbs.data.vader import load_ratings

    texts = [(corpus, text) for corpus in corpora for text in load_ratings(corpus)]
    con.register(
        "_thumbs_vader",
        pa.table(
            {
                "ordinal": list(range(len(texts))),
                "corpus": [c for c, _ in texts],
                "prompt": [PROMPTS[c] for c, _ in texts],
                "text_id": [t.text_id for _, t in texts],
                "text": [t.text for _, t in texts],
                "ratings": [list(t.ratings) for _, t in texts],
            }
        ),
    )
    con.execute(
        f"""INSERT INTO {table}
        SELECT NULL, row_number() OVER (ORDER BY ordinal, k), raw, strlen(raw), NULL FROM (
            SELECT ordinal, k, to_json({{
                'prompt': [{{'role': 'user', 'content': prompt}}], 'completion': text, 'label': rating,
                'text_id': text_id, 'rating': rating, 'corpus': corpus, 'rating_index': k - 1,
                'vote_key': corpus || '/' || text_id || '#' || (k - 1)}})::VARCHAR AS raw
            FROM (SELECT ordinal, corpus, prompt, text_id, text, unnest(ratings) AS rating,
                         unnest(range(1, len(ratings) + 1)) AS k FROM _thumbs_vader))"""
    )
    con.unregister("_thumbs_vader")
