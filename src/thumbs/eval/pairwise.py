"""Pairwise judging: which of two completions answers the prompt better, asked in both orders.

A pairwise judge sees (prompt, response A, response B) through a rubric and replies ``A``, ``B`` or
``tie``. Each sample is asked twice: the policy's completion as A, then the reference's as A. The
policy's outcome in one order is 1 when its completion is chosen, 0.5 for a tie, 0 otherwise; a
sample's outcome is the mean over both orders, so a judge that always picks the first (or the
second) position gives every sample 0.5: position bias cancels instead of deciding the result.

Replies are parsed strictly (:func:`parse_verdict`): the whole reply, or its last line after
``Verdict:``, must be A, B or tie. Anything else is a parse failure, counted in eval.json, and its
sample is left out of the win rate rather than scored as a tie. The win rate is the mean outcome
over the scored samples, its interval the Wilson interval on that sum (n = scored samples: the two
orders of one sample are not independent votes). Two identical completions are a tie without asking.

Replies are cached on disk (``$THUMBS_CACHE/judge/``), keyed by the judge, the rubric, the prompt,
both completions and the order, so a rerun asks only what it has not asked before.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from thumbs.errors import ThumbsError
from thumbs.eval.metrics import wilson_interval

DEFAULT_RUBRIC = """You are judging two responses to the same request. Decide which response is \
better: more helpful, more correct, clearer, and better suited to what was asked. Do not let the \
order of the responses or their length decide.

[Request]
{prompt}

[Response A]
{response_a}

[Response B]
{response_b}

Reply with exactly one word: A if Response A is better, B if Response B is better, or tie."""
PLACEHOLDERS = ("{prompt}", "{response_a}", "{response_b}")
ORDERS = ("policy_first", "reference_first")
UNPARSED_KEPT = 3  # unparsed replies shown in eval.json, so a bad rubric or model is visible
ASK_CHUNK = 16  # questions per call of the backend (the progress bar moves per chunk)
_TRIM = " \t\r\n\"'`*.!()[]<>:"
_LAST_LINE = re.compile(r"^(?:final\s+)?(?:verdict|answer|winner|decision)\s*[:=-]\s*(.+)$", re.IGNORECASE)
_WORDS = {"a": "A", "b": "B", "tie": "tie", "response a": "A", "response b": "B"}


def parse_verdict(reply: str | None) -> str | None:
    """``"A"``, ``"B"``, ``"tie"``, or None when the reply says none of them plainly.

    Accepted: the reply alone (``A``, ``"b".``, ``[[A]]``, ``Tie``, ``Response B``), or a last
    line ``Verdict: A`` (also Answer/Winner/Decision) after any reasoning. Nothing is searched
    for inside prose: "A is better than B" is a parse failure, not a guess.
    """
    if not isinstance(reply, str):
        return None
    text = reply.strip()
    if not text:
        return None
    word = text.strip(_TRIM).lower()
    if word in _WORDS:
        return _WORDS[word]
    last = text.splitlines()[-1].strip().strip("*#").strip()
    match = _LAST_LINE.match(last)
    return _WORDS.get(match.group(1).strip(_TRIM).lower()) if match else None


def load_rubric(path: str | Path | None) -> tuple[str, str]:
    """The rubric text and what eval.json calls it: the default, or a file with the three placeholders."""
    if path is None:
        return DEFAULT_RUBRIC, "default"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ThumbsError(f"cannot read the rubric: {err.strerror or err}", file=str(path)) from None
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise ThumbsError(
            f"the rubric lacks {', '.join(missing)}",
            file=str(path),
            hint="a rubric is the judge's message with {prompt}, {response_a} and {response_b} where "
            "those go; ask for a reply of A, B or tie (or a last line 'Verdict: A|B|tie')",
        )
    return text, str(path)


def render(rubric: str, prompt: Any, response_a: str, response_b: str) -> str:
    """The rubric with its placeholders filled in one pass (braces in the texts stay as they are)."""
    if isinstance(prompt, list):
        prompt = "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in prompt)
    values = {"{prompt}": str(prompt), "{response_a}": response_a, "{response_b}": response_b}
    return re.sub("|".join(map(re.escape, PLACEHOLDERS)), lambda m: values[m.group(0)], rubric)


class ReplyCache:
    """Judge replies on disk, one small JSON file per question; ``None`` turns it off."""

    def __init__(self, folder: Path | None) -> None:
        self.folder, self.hits, self.misses = folder, 0, 0

    @staticmethod
    def key(*parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        if self.folder is None:
            return None
        try:
            reply = json.loads(self._path(key).read_text(encoding="utf-8"))["reply"]
        except (OSError, ValueError, KeyError, TypeError):
            self.misses += 1
            return None
        self.hits += 1
        return reply

    def put(self, key: str, reply: str) -> None:
        if self.folder is not None:
            from thumbs.folders import write_text

            self._path(key).parent.mkdir(parents=True, exist_ok=True)
            write_text(self._path(key), json.dumps({"reply": reply}, ensure_ascii=False))


class PairwiseJudge:
    """A judge that compares two completions; ``ask`` turns chat conversations into replies.

    ``ask(conversations) -> replies`` is the backend: a local chat model, an OpenAI-compatible
    server, or any callable (tests use a plain function). ``key`` names the backend in the cache
    (the model and its generation settings, not where it runs).
    """

    pairwise = True

    def __init__(
        self,
        name: str,
        ask: Callable[[list[list[dict]]], list[str]],
        *,
        key: str | None = None,
        rubric: str | Path | None = None,
        cache: Path | None | bool = True,
    ) -> None:
        from thumbs.paths import cache_dir

        self.name, self.ask, self.key = name, ask, key or name
        self.rubric, self.rubric_name = load_rubric(rubric)
        self.cache = ReplyCache(cache_dir("judge") if cache is True else cache or None)

    def score(self, prompts, completions):
        raise ThumbsError(f"judge {self.name} compares two completions; it gives no score to one")

    def replies(
        self, prompts: Sequence[Any], firsts: Sequence[str], seconds: Sequence[str], order: str, bar=None
    ) -> list[str]:
        """The raw reply for each (prompt, A, B): from the cache, else asked, a chunk at a time."""
        texts = [render(self.rubric, p, a, b) for p, a, b in zip(prompts, firsts, seconds)]
        keys = [
            ReplyCache.key(self.key, self.rubric, p, a, b, order) for p, a, b in zip(prompts, firsts, seconds)
        ]
        replies = [self.cache.get(key) for key in keys]
        todo = [i for i, reply in enumerate(replies) if reply is None]
        if bar is not None:
            bar.update(len(replies) - len(todo))
        for start in range(0, len(todo), ASK_CHUNK):
            chunk = todo[start : start + ASK_CHUNK]
            asked = list(self.ask([[{"role": "user", "content": texts[i]}] for i in chunk]))
            if len(asked) != len(chunk):
                raise ThumbsError(f"judge {self.name} gave {len(asked)} replies to {len(chunk)} questions")
            for i, reply in zip(chunk, asked):
                replies[i] = reply if isinstance(reply, str) else ""
                self.cache.put(keys[i], replies[i])
            if bar is not None:
                bar.update(len(chunk))
        return replies

    def judge_pairs(
        self, prompts: Sequence[Any], policy: Sequence[str], reference: Sequence[str], progress: bool = False
    ) -> tuple[dict, list[float | None]]:
        """eval.json's win-rate fields from both orders, and each sample's outcome (None: unscored)."""
        from tqdm.auto import tqdm

        if not policy or len(policy) != len(reference) or len(prompts) != len(policy):
            raise ThumbsError("a pairwise judge needs one prompt, policy and reference completion per sample")
        asked = [i for i in range(len(policy)) if policy[i] != reference[i]]
        pick = lambda values: [values[i] for i in asked]  # noqa: E731
        with tqdm(total=2 * len(asked), desc="judging pairs, both orders", disable=not progress) as bar:
            first = self.replies(pick(prompts), pick(policy), pick(reference), ORDERS[0], bar)
            second = self.replies(pick(prompts), pick(reference), pick(policy), ORDERS[1], bar)
        outcomes: list[float | None] = [0.5] * len(policy)
        verdicts = {order: {"A": 0, "B": 0, "tie": 0, "unparsed": 0} for order in ORDERS}
        unparsed: list[str] = []
        for i, reply_1, reply_2 in zip(asked, first, second):
            parsed = []
            for order, reply in zip(ORDERS, (reply_1, reply_2)):
                verdict = parse_verdict(reply)
                verdicts[order][verdict or "unparsed"] += 1
                if verdict is None and len(unparsed) < UNPARSED_KEPT:
                    unparsed.append(reply[:200])
                parsed.append(verdict)
            outcomes[i] = combine(*parsed)
        return self._summary(outcomes, verdicts, unparsed, len(policy) - len(asked)), outcomes

    def _summary(self, outcomes, verdicts, unparsed, identical: int) -> dict:
        scored = [o for o in outcomes if o is not None]
        failures = sum(v["unparsed"] for v in verdicts.values())
        counts = {
            "scored": len(scored),
            "unscored": len(outcomes) - len(scored),
            "identical": identical,
            "replies": 2 * (len(outcomes) - identical),
            "parse_failures": failures,
            "verdicts": verdicts,
            "unparsed_examples": unparsed,
            "rubric": self.rubric_name,
            "cache": {"hits": self.cache.hits, "misses": self.cache.misses},
        }
        if failures and len(scored) == identical:  # every pair that was asked about went unparsed
            raise ThumbsError(
                f"judge {self.name}: {failures} of {counts['replies']} replies were not A, B or tie, "
                f"so no sample could be scored (e.g. {unparsed[0]!r})",
                hint="check the judge model and the rubric (--rubric FILE): the reply must be A, B or "
                "tie, or end with a line 'Verdict: A|B|tie'",
            )
        parsed_ab = {k: sum(v[k] for v in verdicts.values()) for k in ("A", "B")}
        total = sum(scored)
        low, high = wilson_interval(total, len(scored))
        return {
            "win_rate": total / len(scored),
            "win_rate_ci": [low, high],
            "wins": sum(o > 0.5 for o in scored),
            "ties": sum(o == 0.5 for o in scored),
            "losses": sum(o < 0.5 for o in scored),
            "pairwise": {
                **counts,
                # share of decided verdicts that chose the first position: 0.5 is no position bias
                "first_position_rate": parsed_ab["A"] / (parsed_ab["A"] + parsed_ab["B"])
                if parsed_ab["A"] + parsed_ab["B"]
                else None,
            },
        }


def combine(policy_first: str | None, reference_first: str | None) -> float | None:
    """A sample's outcome for the policy from its two verdicts (policy as A, then as B); None if unparsed."""
    if policy_first is None or reference_first is None:
        return None
    as_a = {"A": 1.0, "tie": 0.5, "B": 0.0}[policy_first]
    as_b = {"B": 1.0, "tie": 0.5, "A": 0.0}[reference_first]
    return (as_a + as_b) / 2
