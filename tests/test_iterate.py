"""thumbs iterate: rounds of answer → feedback → ingest → audit → train → evaluate, on tiny models.

Every model is a tiny random Llama built in the test's folder; nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from thumbs.cli import app
from thumbs.config import load_config
from thumbs.data.ingest import ingest, read_events
from thumbs.errors import ThumbsError
from thumbs.iterate.rounds import iterate
from thumbs.iterate.settings import IterateSettings, load

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "iterate-tiny.yaml"
JUDGE = '''
def vowels(prompt, completion):
    """The share of vowels: a score a random byte-level model's answers spread over."""
    return sum(c in "aeiouAEIOU" for c in completion) / max(1, len(completion))
'''


def small(tmp_path: Path, **settings) -> tuple:
    """The example's training config at test size, and iterate settings with a python judge."""
    judge = tmp_path / "judge.py"
    judge.write_text(JUDGE)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"Describe item {i}.\n" for i in range(8)))
    cfg, _ = load(EXAMPLE, ["train.max_steps=2", "train.batch_size=4"], {})
    values = dict(prompts=str(prompts), feedback="judge", judge=f"python:{judge}:vowels", samples_per_prompt=3,
                  max_new_tokens=10, eval_n=4, rounds=2, eval_fraction=0.25)  # fmt: skip
    return cfg, IterateSettings(**(values | settings))


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_example_with_population_two_rounds(tmp_path, monkeypatch):
    out = tmp_path / "it"
    monkeypatch.chdir(ROOT)  # the example names its prompts file relative to the repository
    result = CliRunner().invoke(
        app, ["iterate", str(EXAMPLE), "--rounds", "2", "--feedback", "population", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    state = json.loads((out / "iterate.json").read_text())
    assert state["status"] == "finished" and [r["round"] for r in state["rounds"]] == [1, 2]
    page = (out / "iterate.html").read_text()
    assert page.count("data:image/png;base64,") == 1
    # how often each round's policy ended an answer before the cap, beside the original: a policy
    # whose answers all run to the cap is seen in the table, not only in eval.json
    for r in state["rounds"]:
        stopped = r["against_original"]["length"]["stopped"]
        assert 0 <= stopped["policy"] <= 1 and 0 <= stopped["reference"] <= 1
        assert f"{stopped['policy']:.0%} end ({stopped['reference']:.0%})" in page
    for number in (1, 2):
        folder = out / f"round-{number}"
        # the planted heavy downvoters, and only they, are found by every round's audit
        audit = json.loads((folder / "audit.json").read_text())
        assert {u["user_id"] for u in audit["users"]["heavy_downvoters"]["users"]} == {"heavy-0", "heavy-1"}
        # the round's feedback log, ingested again on its own, gives the same events
        again = ingest([str(folder / "feedback.jsonl")], tmp_path / f"again-{number}", eval_fraction=0.25)
        assert again["rows_ok"] == state["rounds"][number - 1]["ingest"]["rows_ok"]
        before, after = read_events(folder / "data"), read_events(tmp_path / f"again-{number}")
        assert sorted(before["event_id"].to_pylist()) == sorted(after["event_id"].to_pylist())
        assert before.sort_by("event_id")["label"].equals(after.sort_by("event_id")["label"])
        # the answers the votes are on are the policy's own, this round's
        answered = {(a["prompt"], a["completion"]) for a in rows(folder / "answers.jsonl")}
        assert {(v["prompt"], v["completion"]) for v in rows(folder / "feedback.jsonl")} == answered
    # round 2 starts from, and trains against, round 1's final model (its adapter merged in)
    merged = out / "round-1" / "run" / "final" / "merged"
    run2 = yaml.safe_load((out / "round-2" / "run" / "config.yaml").read_text())
    assert Path(run2["model"]["name_or_path"]) == merged
    assert Path(state["rounds"][1]["trained_reference"]) == merged
    assert Path(state["rounds"][1]["against_start"]["reference"]) == merged
    assert Path(state["rounds"][1]["against_original"]["reference"]) == out / "original"
    assert state["reference"] == "start" and "merged" in state["reference_note"]


def test_judge_rounds_resume_without_redoing_a_finished_round(tmp_path):
    cfg, settings = small(tmp_path, rounds=1, threshold="median")
    out = tmp_path / "it"
    first = iterate(cfg, settings, out, progress=False)
    assert first["status"] == "finished" and len(first["rounds"]) == 1
    round1 = out / "round-1"
    # judge → thumbs at the round's median: up exactly for the answers scored above it
    answers, votes = rows(round1 / "answers.jsonl"), rows(round1 / "feedback.jsonl")
    scores = [sum(c in "aeiouAEIOU" for c in a["completion"]) / max(1, len(a["completion"])) for a in answers]
    assert [v["label"] for v in votes] == [s > np.median(scores) for s in scores]
    assert {v["user_id"] for v in votes} == {"judge"}
    stamps = {p: p.stat().st_mtime_ns for p in round1.rglob("*") if p.is_file()}

    second = iterate(cfg, settings.model_copy(update={"rounds": 2}), out, progress=False)
    assert [r["round"] for r in second["rounds"]] == [1, 2]
    assert second["rounds"][0] == first["rounds"][0]
    assert {p: p.stat().st_mtime_ns for p in round1.rglob("*") if p.is_file()} == stamps  # nothing redone
    merged = str(round1 / "run" / "final" / "merged")
    assert second["rounds"][1]["start"] == merged == second["rounds"][1]["trained_reference"]

    # an interrupted round 2 (its evaluation lost) is finished again from its trained run
    for name in ("round.json", "eval.json"):
        (out / "round-2" / name).unlink()
    final = out / "round-2" / "run" / "final" / "adapter_model.safetensors"
    trained = final.stat().st_mtime_ns
    third = iterate(cfg, settings.model_copy(update={"rounds": 2}), out, progress=False)
    assert final.stat().st_mtime_ns == trained
    assert third["rounds"][1]["against_start"] == second["rounds"][1]["against_start"]

    # a round interrupted in training (no final model yet) trains again and finishes
    import shutil

    shutil.rmtree(out / "round-2" / "run" / "final")
    for name in ("round.json", "eval.json"):
        (out / "round-2" / name).unlink()
    fourth = iterate(cfg, settings.model_copy(update={"rounds": 2}), out, progress=False)
    assert final.exists() and fourth["rounds"][1]["audit"] == second["rounds"][1]["audit"]

    # a pairwise evaluation judge brings verdicts and no reward: the page still renders
    from thumbs.iterate.page import render

    verdicts = json.loads(json.dumps(third))
    for r in verdicts["rounds"]:
        r["against_start"]["reward"] = r["against_original"]["reward"] = None
    assert "pairwise judge" in render(verdicts)

    # other settings into the same folder are refused, naming what changed
    with pytest.raises(ThumbsError, match="samples_per_prompt"):
        iterate(cfg, settings.model_copy(update={"samples_per_prompt": 5}), out, progress=False)


def write_votes(path: Path, answers: list[dict]) -> Path:
    """A deployment's votes on the answers, in its own shape (here a CSV with up/down)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "completion", "label", "user_id"])
        for i, a in enumerate(answers):
            writer.writerow([a["prompt"], a["completion"], ["down", "up"][i % 2], f"u{i % 3}"])
    return path


def test_log_source_stops_after_answers_and_continues_from_a_feedback_file(tmp_path):
    cfg, settings = small(tmp_path, feedback="log", rounds=2)
    out = tmp_path / "it"
    waiting = iterate(cfg, settings, out, progress=False)
    assert waiting["status"] == "waiting for feedback on round 1" and waiting["rounds"] == []
    folder = out / "round-1"
    assert (folder / "answers.jsonl").exists() and not (folder / "data").exists()
    assert not list(folder.glob("feedback.*"))
    # asked again without votes, it waits again and does nothing else
    assert iterate(cfg, settings, out, progress=False)["status"] == "waiting for feedback on round 1"
    answers = rows(folder / "answers.jsonl")
    votes = write_votes(tmp_path / "votes.csv", answers)
    next_round = iterate(cfg, settings, out, feedback_file=votes, progress=False)
    # round 1 finished on those votes; round 2's answers come from round 1's model, and it waits
    assert next_round["status"] == "waiting for feedback on round 2"
    assert next_round["rounds"][0]["feedback"]["source"] == "log"
    assert (folder / "feedback.csv").read_bytes() == votes.read_bytes()
    assert next_round["rounds"][0]["audit"]["votes"] == len(answers)
    assert (out / "round-2" / "answers.jsonl").exists() and not (out / "round-2" / "data").exists()
    second = write_votes(tmp_path / "votes-2.csv", rows(out / "round-2" / "answers.jsonl"))
    done = iterate(cfg, settings, out, feedback_file=second, progress=False)
    assert done["status"] == "finished" and [r["round"] for r in done["rounds"]] == [1, 2]
    assert done["rounds"][1]["start"] == str(folder / "run" / "final" / "merged")
    # no round waits any more: a feedback file now is a mistake, said so
    with pytest.raises(ThumbsError, match="no round was waiting"):
        iterate(cfg, settings, out, feedback_file=second, progress=False)


def test_reference_original_carries_one_adapter_over_the_original(tmp_path):
    cfg, settings = small(tmp_path, reference="original")
    out = tmp_path / "it"
    state = iterate(cfg, settings, out, progress=False)
    original = str(out / "original")
    run2 = yaml.safe_load((out / "round-2" / "run" / "config.yaml").read_text())
    assert run2["model"]["name_or_path"] == original
    assert run2["model"]["adapter"] == str(out / "round-1" / "run" / "final")
    adapter = json.loads((out / "round-2" / "run" / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == original
    second = state["rounds"][1]
    assert second["trained_reference"] == original == second["against_original"]["reference"]
    assert second["against_start"]["reference"] == str(out / "round-1" / "run" / "final" / "merged")


def test_bad_settings_fail_before_any_model_loads(tmp_path):
    with pytest.raises(ThumbsError, match="threshold"):
        load(EXAMPLE, [], {"threshold": "quantile:2"})
    with pytest.raises(ThumbsError, match="iterate.nope"):
        from thumbs.iterate.settings import settings_from

        settings_from({"nope": 1}, {}, "x.yaml")
    cfg = load_config(None, ["model.lora.enabled=false", "model.name_or_path=tiny"])
    with pytest.raises(ThumbsError, match="needs LoRA"):
        iterate(cfg, IterateSettings(prompts="p.txt", reference="original"), tmp_path / "x")
    with pytest.raises(ThumbsError, match="compares two answers"):
        iterate(load_config(None, ["model.name_or_path=tiny"]),
                IterateSettings(prompts="p.txt", judge="openai:http://127.0.0.1:9/v1"), tmp_path / "x")  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_production_demo_rounds_run_both_variants_on_the_same_first_round(tmp_path):
    from thumbs.demo.rounds import VARIANTS, run_production_rounds
    from thumbs.models import save_tiny

    start = save_tiny(tmp_path / "start", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    states = run_production_rounds(tmp_path / "demo", 1, quick=True, model=str(start))
    assert list(states) == list(VARIANTS)
    root = tmp_path / "demo" / "production-rounds-quick"
    logs = [(root / name / "round-1" / "feedback.jsonl").read_text() for name in VARIANTS]
    assert logs[0] == logs[1]  # the same answers and votes: the variants differ only in training
    options = [json.loads((root / n / "round-1" / "run" / "data_summary.json").read_text()) for n in VARIANTS]
    assert [o["feedback_options"]["user_balance"]["mode"] for o in options] == ["none", "inverse"]


def test_demo_rounds_need_the_production_scenario():
    result = CliRunner().invoke(app, ["demo", "--rounds", "2"])
    assert result.exit_code == 2 and "--scenario production" in result.output


def test_a_judge_that_gives_nan_stops_the_round_instead_of_voting(tmp_path):
    """A NaN is above no threshold: taken as it is, it would become a silent thumbs-down."""
    cfg, settings = small(tmp_path, rounds=1)
    bad = tmp_path / "nanjudge.py"
    bad.write_text("def score(prompt, completion):\n    return float('nan')\n")
    settings = settings.model_copy(update={"judge": f"python:{bad}:score"})
    with pytest.raises(ThumbsError, match="not a finite number"):
        iterate(cfg, settings, tmp_path / "it")
    assert not list((tmp_path / "it").glob("round-1/feedback*"))
