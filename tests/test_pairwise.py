"""Pairwise judging without a server: the strict parser, both orders, position bias, the cache."""

from __future__ import annotations

import pytest

from tests.judge_fixtures import Recorder
from thumbs.errors import ThumbsError
from thumbs.eval.judges import make_judge
from thumbs.eval.pairwise import PairwiseJudge, combine, parse_verdict, render


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("A", "A"),
        (" b\n", "B"),
        ("Tie", "tie"),
        ('"A".', "A"),
        ("[[B]]", "B"),
        ("**A**", "A"),
        ("Response B", "B"),
        ("B is more specific.\nVerdict: A", "A"),
        ("Reasoning...\n**Final verdict: tie**", "tie"),
        ("A is better than B", None),  # prose is not searched for a letter
        ("Both are fine", None),
        ("C", None),
        ("", None),
        ("\n\n\n", None),
        (None, None),
        ("Verdict: maybe", None),
        ("AB", None),
    ],
)
def test_parse_verdict_is_strict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_combine_two_orders():
    assert combine("A", "B") == 1.0  # policy chosen in both positions
    assert combine("B", "A") == 0.0
    assert combine("A", "A") == 0.5  # always the first position: no information
    assert combine("tie", "B") == 0.75
    assert combine("A", None) is None


PROMPTS = ["Say something nice.", [{"role": "user", "content": "Review the {film}."}], "Hi", "Hey"]
POLICY = ["good good", "good {response_b} film", "same", "meh"]
REFERENCE = ["bad", "a film", "same", "good good good"]


def test_both_orders_asked_and_position_bias_cancels(tmp_path):
    first = Recorder(decide=lambda a, b: "A")  # the most position-biased judge there is
    judge = PairwiseJudge("first", first, cache=tmp_path / "c1")
    summary, outcomes = judge.judge_pairs(PROMPTS, POLICY, REFERENCE)
    # identical completions (sample 2) are a tie without asking; every other pair in both orders
    pairs = [(p, r) for p, r in zip(POLICY, REFERENCE) if p != r]
    assert sorted(first.asked) == sorted(pairs + [(r, p) for p, r in pairs])
    assert outcomes == [0.5, 0.5, 0.5, 0.5]
    assert summary["win_rate"] == 0.5 and summary["ties"] == 4
    assert summary["pairwise"]["first_position_rate"] == 1.0
    assert summary["pairwise"]["identical"] == 1 and summary["pairwise"]["replies"] == 6
    # braces in a completion are not placeholders: the text reached the judge as it was
    assert ("good {response_b} film", "a film") in first.asked


def test_a_judge_that_reads_the_answers_decides_in_both_orders(tmp_path):
    longer = Recorder(decide=lambda a, b: "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie")
    summary, outcomes = PairwiseJudge("longer", longer, cache=None).judge_pairs(PROMPTS, POLICY, REFERENCE)
    assert outcomes == [1.0, 1.0, 0.5, 0.0]
    assert summary["win_rate"] == pytest.approx(2.5 / 4)
    assert (summary["wins"], summary["ties"], summary["losses"]) == (2, 1, 1)
    low, high = summary["win_rate_ci"]
    assert low < summary["win_rate"] < high
    assert summary["pairwise"]["first_position_rate"] == 0.5


def test_unparsed_replies_are_counted_and_not_scored(tmp_path):
    # garbage whenever the policy's completion mentions a film; otherwise a fair judge
    def decide(a, b):
        if "film" in a + b:
            return "I cannot decide, both are lovely!"
        return "A" if "good" in a else "B"

    summary, outcomes = PairwiseJudge("picky", Recorder(decide=decide), cache=None).judge_pairs(
        PROMPTS, POLICY, REFERENCE
    )
    assert outcomes == [1.0, None, 0.5, 0.0]
    pairwise = summary["pairwise"]
    assert (pairwise["scored"], pairwise["unscored"], pairwise["parse_failures"]) == (3, 1, 2)
    assert pairwise["verdicts"]["policy_first"]["unparsed"] == 1
    assert pairwise["unparsed_examples"] == ["I cannot decide, both are lovely!"] * 2
    assert summary["win_rate"] == pytest.approx(1.5 / 3)  # over the scored samples only


def test_no_parsable_reply_is_an_error_not_a_result(tmp_path):
    judge = PairwiseJudge("mumble", Recorder(decide=lambda a, b: "hmm"), cache=None)
    with pytest.raises(ThumbsError, match=r"6 of 6 replies were not A, B or tie.*'hmm'"):
        judge.judge_pairs(PROMPTS, POLICY, REFERENCE)


def test_cache_answers_a_rerun_and_changes_with_the_rubric(tmp_path):
    cache = tmp_path / "cache"
    first = Recorder(decide=lambda a, b: "A")
    PairwiseJudge("j", first, cache=cache).judge_pairs(PROMPTS, POLICY, REFERENCE)
    again = Recorder(decide=lambda a, b: "B")
    rerun = PairwiseJudge("j", again, cache=cache)
    summary, _ = rerun.judge_pairs(PROMPTS, POLICY, REFERENCE)
    assert again.asked == [] and summary["pairwise"]["cache"] == {"hits": 6, "misses": 0}
    assert summary["pairwise"]["first_position_rate"] == 1.0  # the cached replies, not the new judge's
    rubric = tmp_path / "rubric.txt"
    rubric.write_text(
        "Q: {prompt}\n[Response A]\n{response_a}\n\n[Response B]\n{response_b}\n\nReply with A/B"
    )
    PairwiseJudge("j", again, cache=cache, rubric=rubric).judge_pairs(PROMPTS, POLICY, REFERENCE)
    assert len(again.asked) == 6  # another rubric is another question


def test_rubric_checks_and_rendering(tmp_path):
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Which is better, {response_a} or {response_b}?")
    with pytest.raises(ThumbsError, match=r"lacks \{prompt\}"):
        make_judge("openai:http://127.0.0.1:9/v1#m", rubric=rubric)
    with pytest.raises(ThumbsError, match="cannot read the rubric"):
        make_judge("llm:whatever", rubric=tmp_path / "missing.txt")
    with pytest.raises(ThumbsError, match="--rubric is for the pairwise judges"):
        make_judge("vader", rubric=rubric)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render("{prompt}|{response_a}|{response_b}", chat, "{prompt}", "b") == (
        "system: Be brief.\nuser: Hi|{prompt}|b"
    )


def test_bad_judge_specs():
    with pytest.raises(ThumbsError, match="not an http"):
        make_judge("openai:localhost:8000#m")
    with pytest.raises(ThumbsError, match="names no model"):
        make_judge("llm:")
    with pytest.raises(ThumbsError, match="compares two completions"):
        PairwiseJudge("j", Recorder(decide=lambda a, b: "A"), cache=None).score(["p"], ["c"])
