"""LLM judges against a real OpenAI-compatible server (`transformers serve`, started here on
127.0.0.1) and as a local chat model: both orders asked, unparsable replies counted, a server
that is down a clear error, and a rerun answered from the cache."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.judge_fixtures import Recorder, free_port, save_first_sayer, serve
from thumbs.cli import app
from thumbs.errors import ThumbsError
from thumbs.eval.judges import make_judge
from thumbs.eval.llm_judge import OpenAIChat
from thumbs.eval.pairwise import PairwiseJudge
from thumbs.models import save_tiny

PROMPTS = ["Say something nice.", [{"role": "user", "content": "Name a colour."}], "Hi"]
POLICY = ["You are great.", "Blue.", "Hello there!"]
REFERENCE = ["Go away.", "Seven.", "Hm."]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("judges")
    return {"garbage": save_tiny(root / "garbage"), "first": save_first_sayer(root / "first")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def first_server(tmp_path_factory, models):
    """A server of the first-sayer alone: the judge finds the model without #MODEL."""
    with serve(tmp_path_factory.mktemp("serve") / "serve.log", models["first"]) as url:
        yield url


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("THUMBS_CACHE", str(tmp_path / "cache"))


def _both_orders(asked):
    pairs = list(zip(POLICY, REFERENCE))
    return sorted(asked) == sorted(pairs + [(r, p) for p, r in pairs])


def test_garbage_replies_from_the_server_are_parse_failures_in_both_orders(server, models, tmp_path):
    backend = Recorder(OpenAIChat(server, str(models["garbage"])))
    judge = PairwiseJudge("garbage", backend, key=backend.backend.key, cache=tmp_path / "replies")
    with pytest.raises(ThumbsError, match=r"6 of 6 replies were not A, B or tie"):
        judge.judge_pairs(PROMPTS, POLICY, REFERENCE)
    assert _both_orders(backend.asked)
    assert len(list((tmp_path / "replies").rglob("*.json"))) == 6  # the server's replies, kept
    # a model the server cannot load: its HTTP error, said once retries are spent
    with pytest.raises(ThumbsError, match=r"answered HTTP \d+"):
        make_judge(f"openai:{server}#{tmp_path / 'no-such-model'}").judge_pairs(PROMPTS, POLICY, REFERENCE)


def test_first_sayer_over_the_server_cancels_and_the_cache_answers_a_rerun(server, models):
    judge = make_judge(f"openai:{server}#{models['first']}")
    assert judge.name == f"openai:{server}#{models['first']}"
    recorder = Recorder(judge.ask)
    judge.ask = recorder
    summary, outcomes = judge.judge_pairs(PROMPTS, POLICY, REFERENCE)
    assert _both_orders(recorder.asked)
    pairwise = summary["pairwise"]
    assert pairwise["verdicts"]["policy_first"] == {"A": 3, "B": 0, "tie": 0, "unparsed": 0}
    assert pairwise["verdicts"]["reference_first"]["A"] == 3 and pairwise["parse_failures"] == 0
    assert pairwise["first_position_rate"] == 1.0
    assert outcomes == [0.5, 0.5, 0.5] and summary["win_rate"] == 0.5
    # the same questions with the server gone: every reply comes from the cache
    dead = make_judge(f"openai:http://127.0.0.1:{free_port()}/v1#{models['first']}")
    again, _ = dead.judge_pairs(PROMPTS, POLICY, REFERENCE)
    assert again["pairwise"]["cache"] == {"hits": 6, "misses": 0} and again["win_rate"] == 0.5
    # a question it has not seen must go to the server, which is down: a clear error
    with pytest.raises(ThumbsError, match=r"did not answer \(4 tries"):
        dead.judge_pairs(["New prompt"], ["a"], ["b"])


def test_server_down_is_a_clear_error_from_the_cli(tmp_path, models):
    result = CliRunner().invoke(
        app,
        ["eval", str(models["first"]), "--reference", str(models["garbage"]), "--prompts", "x.txt",
         "--judge", f"openai:http://127.0.0.1:{free_port()}/v1"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "judge server http://127.0.0.1:" in result.output and "did not answer" in result.output
    assert "Traceback" not in result.output


def test_thumbs_eval_with_the_server_judge_and_a_rubric(first_server, models, tmp_path):
    policy, reference = save_tiny(tmp_path / "policy", seed=1), save_tiny(tmp_path / "reference", seed=2)
    (tmp_path / "prompts.txt").write_text("Say hi.\nName a colour.\n")
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Q: {prompt}\nA: {response_a}\nB: {response_b}\nBetter? Answer A, B or tie.")
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        app,
        ["eval", str(policy), "--reference", str(reference), "--prompts", str(tmp_path / "prompts.txt"),
         "--judge", f"openai:{first_server}", "--rubric", str(rubric), "--n", "3",
         "--max-new-tokens", "6", "--out", str(out), "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    pairwise = written["pairwise"]
    assert written["judge"] == f"openai:{first_server}#{models['first']}"  # the server's only model
    assert pairwise["rubric"] == str(rubric) and pairwise["parse_failures"] == 0
    asked = written["n"] - pairwise["identical"]
    assert asked > 0
    assert pairwise["verdicts"]["policy_first"]["A"] == pairwise["verdicts"]["reference_first"]["A"] == asked
    assert written["win_rate"] == 0.5 and written["reward"] is None
    assert "unparsed replies" in result.output


def test_local_chat_model_judge(models):
    summary, outcomes = make_judge(f"llm:{models['first']}").judge_pairs(PROMPTS, POLICY, REFERENCE)
    assert outcomes == [0.5, 0.5, 0.5] and summary["pairwise"]["verdicts"]["reference_first"]["A"] == 3
    with pytest.raises(ThumbsError, match="were not A, B or tie"):
        make_judge(f"llm:{models['garbage']}").judge_pairs(PROMPTS, POLICY, REFERENCE)
