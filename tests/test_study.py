"""`thumbs study` on tiny models: cells made by the train/eval code, equal budgets recorded, resume
without retraining, --plan commands that run, failed cells kept, bad study files refused before
anything trains; and the verdict logic on synthetic frontiers."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.helpers import toy_feedback, write_jsonl
from thumbs.cli import app
from thumbs.errors import ThumbsError
from thumbs.study.run import run_study
from thumbs.study.spec import load_study
from thumbs.study.verdict import Point, compare, line, samples_needed

ROOT = Path(__file__).resolve().parents[1]
JUDGE = f"python:{ROOT / 'examples' / 'study_judge.py'}:letters"


def _study(tmp_path: Path, **changes) -> Path:
    """A study of tiny models on toy feedback; ``changes`` replace top-level sections."""
    data = write_jsonl(tmp_path / "feedback.jsonl", toy_feedback(48, seed=3))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Review the film:\nReview the meal:\nReview the park:\n")
    tree = {
        "base": {
            "model": {"name_or_path": "tiny", "lora": {"r": 4, "alpha": 8},
                      "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "num_key_value_heads": 1}},
            "data": {"train": str(data), "max_length": 64},
            "train": {"batch_size": 4, "learning_rate": 2e-2, "warmup_ratio": 0.0},
        },
        "grid": {"method": ["kto", "dpo"], "beta": [0.1, 0.5]},
        "per_method": {"dpo": {"train.batch_size": 2}},
        "budget": {"sequences": 16},
        "eval": {"judge": JUDGE, "prompts": str(prompts), "n": 6, "max_new_tokens": 6},
    }  # fmt: skip
    tree.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("THUMBS_CACHE", str(tmp_path / "cache"))


def _counting_train(monkeypatch, fail_on: int | None = None):
    """Count calls to the training entry point; raise Ctrl-C at call number ``fail_on``."""
    import thumbs.train.loop as loop

    real, calls = loop.train, []

    def train(cfg, *, resume=False, overwrite=False):
        calls.append(Path(cfg.output_dir).name)
        if fail_on is not None and len(calls) == fail_on:
            raise KeyboardInterrupt
        return real(cfg, resume=resume, overwrite=overwrite)

    monkeypatch.setattr(loop, "train", train)
    return calls


def test_study_runs_resumes_without_retraining_and_states_every_budget(tmp_path, cache, monkeypatch):
    study, out = _study(tmp_path, kl_match=0.9), tmp_path / "study"  # KLs this close count as matched
    calls = _counting_train(monkeypatch, fail_on=3)
    with pytest.raises(KeyboardInterrupt):  # interrupted as the third cell starts
        run_study(study, out)
    first = [out / "cells" / name for name in calls[:2]]
    stamps = {cell: (cell / "final" / "adapter_model.safetensors").stat().st_mtime_ns for cell in first}
    assert all((cell / "eval.json").exists() for cell in first)

    calls = _counting_train(monkeypatch)
    result = run_study(study, out)
    assert len(calls) == 2 and not set(calls) & {c.name for c in first}  # only the two unfinished cells
    assert all(
        (cell / "final" / "adapter_model.safetensors").stat().st_mtime_ns == stamps[cell] for cell in first
    )

    saved = json.loads((out / "study.json").read_text())
    assert [c["name"] for c in saved["cells"]] == [c["name"] for c in result["cells"]]
    assert sorted((c["method"], c["beta"]) for c in saved["cells"]) == [
        ("dpo", 0.1), ("dpo", 0.5), ("kto", 0.1), ("kto", 0.5)
    ]  # fmt: skip
    for cell in saved["cells"]:
        assert cell["status"] == "done" and cell["result"]["n"] == 6
        assert cell["result"]["kl"]["estimate"] == "kl_tokens" and cell["result"]["reward_diff"]["paired"]
        budget = cell["budget"]
        assert budget["sequences_with_gradient"] == 16 and budget["asked"] == {"sequences": 16}
        assert budget["steps"] == 4  # KTO: 4 examples a step; DPO: 2 pairs, 4 sequences
        assert budget["votes"] == 48  # DPO's pairs come from the same votes as KTO's examples
        if cell["method"] == "dpo":
            assert budget["examples"] == budget["pairs"] and isinstance(budget["unusable_votes"], int)
            summary = json.loads((out / cell["dir"] / "data_summary.json").read_text())
            assert budget["unusable_votes"] == summary["pairing"]["unusable_examples"]
    assert [c["reused"] for c in saved["cells"][:2]] == [["train", "eval"], ["train", "eval"]]
    assert saved["verdicts"] and {c["kind"] for c in saved["comparisons"]} <= {
        "exceeds", "crosses", "cannot tell apart", "no ranking", "dominates"
    }  # fmt: skip
    (versus,) = saved["head_to_head"]  # KTO's best cell against DPO's, paired on the same prompts and streams
    assert {versus["a"].split("-")[1], versus["b"].split("-")[1]} == {"kto", "dpo"}
    assert versus["reward_diff"]["n"] == 6 and (out / versus["file"]).exists()
    assert versus["text"] in saved["verdicts"]
    page = (out / "study.html").read_text()
    assert "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")
    assert all(c["name"] in page for c in saved["cells"])

    from thumbs.report.compare import compare as compare_runs

    report = compare_runs([out], tmp_path / "report.html")  # a study folder stands for its cells
    assert all(f"study/{c['name']}" in report.read_text() for c in saved["cells"])


def test_plan_prints_commands_that_make_the_cells(tmp_path, cache, monkeypatch, capsys):
    study = _study(tmp_path, grid={"method": ["kto"], "beta": [0.1, 0.3]})
    out = tmp_path / "planned"
    run_study(study, out, plan=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("thumbs ")]
    trains = [line for line in lines if line.startswith("thumbs train")]
    evals = [line for line in lines if line.startswith("thumbs eval")]
    assert len(trains) == len(evals) == 2 and not (out / "cells" / "clean-kto-b0.1-s0").exists()
    runner = CliRunner()
    for command in (trains[0], evals[0]):  # the first cell, made elsewhere, by the printed commands
        outcome = runner.invoke(app, shlex.split(command)[1:])
        assert outcome.exit_code == 0, outcome.output
    made = out / "cells" / "clean-kto-b0.1-s0"
    assert (made / "final").exists() and (made / "eval.json").exists()

    calls = _counting_train(monkeypatch)
    result = run_study(study, out)  # gathers: the planned cell is reused, the other is trained
    assert calls == ["clean-kto-b0.3-s0"]
    assert [c["reused"] for c in result["cells"]] == [["train", "eval"], []]
    assert result["cells"][0]["budget"]["sequences_with_gradient"] == 16

    tree = yaml.safe_load(study.read_text())  # the same folder for a changed study: refused, nothing trains
    tree["base"]["train"]["learning_rate"] = 1e-3
    study.write_text(yaml.safe_dump(tree))
    with pytest.raises(ThumbsError, match="train.learning_rate is 0.02 there, the study gives 0.001"):
        run_study(study, out)
    assert calls == ["clean-kto-b0.3-s0"]


def test_a_cell_that_fails_is_recorded_and_the_study_exits_nonzero(tmp_path, cache):
    # no thumbs-up left: KTO trains on the thumbs-down alone, DPO finds no pairs and fails
    study = _study(
        tmp_path, grid={"method": ["kto", "dpo"], "beta": [0.1]},
        conditions={"no-ups": {"kind": "imbalance", "fraction": 0.0}}, budget={"epochs": 1},
    )  # fmt: skip
    out = tmp_path / "study"
    outcome = CliRunner().invoke(app, ["study", str(study), "-o", str(out)])
    assert outcome.exit_code == 1, outcome.output
    cells = {c["method"]: c for c in json.loads((out / "study.json").read_text())["cells"]}
    assert cells["kto"]["status"] == "done"
    assert cells["kto"]["budget"]["condition"]["desirable_kept"] == 0
    kto = cells["kto"]["budget"]  # one epoch over its own examples: whole microbatches of 4
    assert kto["asked"] == {"epochs": 1} and kto["steps"] == kto["examples"] // 4 and 0.8 < kto["epochs"] <= 1
    assert cells["dpo"]["status"] == "failed" and cells["dpo"]["result"] is None
    assert cells["dpo"]["error"]["stage"] == "train" and "no pairs" in cells["dpo"]["error"]["message"]
    assert "failed" in (out / "study.html").read_text()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"grdi": {}}, "unknown key 'grdi'"),
        ({"grid": {"method": ["kto"], "betas": [0.1]}}, "unknown key 'grid.betas'"),
        ({"eval": {"n": 4, "judges": "vader"}}, "unknown key 'eval.judges'"),
        ({"grid": {"method": ["kto", "sft"], "beta": [0.1]}}, "'grid.beta': method 'sft' takes no β"),
        ({"grid": {"method": ["kto"], "beta": {"dpo": [0.1]}}}, "'grid.beta.dpo'"),
        ({"grid": {"method": ["kto", "ppo"]}}, "'grid.method': unknown method 'ppo'"),
        ({"budget": {"sequences": 16, "epochs": 1}}, "'budget'"),
        ({"per_method": {"dpo": {"train.batch_size": 0}}}, "'cell clean-dpo-b0.1-s0: train.batch_size'"),
        ({"per_method": {"dpo": {"kto.beta": 0.3}}}, "'per_method.dpo.kto.beta'"),
        (
            {"conditions": {"imb": {"kind": "imbalance", "fraction": 0.1,
                                    "settings": {"auto": {"kto.desirable_weight": "auto"}}}}},
            "'conditions.imb.settings.auto.kto.desirable_weight': a kto setting, which method 'dpo' does not take",
        ),
        ({"conditions": {"imb": {"kind": "imbalance"}}}, "'conditions.imb'"),
        ({"conditions": {"x": {"kind": "none", "settings": {"s": {"train.max_steps": 9}}}}}, "train.max_steps"),
    ],
)  # fmt: skip
def test_a_bad_study_fails_before_any_training_and_names_the_key(tmp_path, monkeypatch, change, named):
    study = _study(tmp_path, **change)
    calls = _counting_train(monkeypatch)
    outcome = CliRunner().invoke(app, ["study", str(study), "-o", str(tmp_path / "out")])
    assert outcome.exit_code == 2, outcome.output
    assert named in outcome.output and "invalid study" in outcome.output
    assert calls == [] and not (tmp_path / "out").exists()


def test_an_unknown_base_config_key_is_named(tmp_path):
    study = _study(tmp_path)
    tree = yaml.safe_load(study.read_text())
    tree["base"]["train"]["bacth_size"] = 4
    study.write_text(yaml.safe_dump(tree))
    with pytest.raises(ThumbsError, match="unknown key 'base.train.bacth_size'"):
        load_study(study)


def test_the_example_study_is_valid_and_plans(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # its paths are relative to the repository, as examples/tiny.yaml's are
    spec, _ = load_study(ROOT / "examples" / "study-tiny.yaml")
    assert set(spec.grid.method) == {"kto", "dpo"} and len(spec.grid.beta) == 2
    run_study(ROOT / "examples" / "study-tiny.yaml", tmp_path / "plan", plan=True)
    printed = capsys.readouterr().out
    assert printed.count("thumbs train") == 6 and "data.condition" in printed


# ---- the verdict on synthetic frontiers ------------------------------------------------------------


def _line(*points, se=0.01, kl_se=0.1, n=128):
    return line(
        [Point(kl=k, kl_se=kl_se, reward=r, reward_se=se, n=n, beta=i) for i, (k, r) in enumerate(points)]
    )


def test_separated_intervals_at_matched_kl_say_exceeds():
    kto = _line((2.0, 0.60), (4.0, 0.70), (6.0, 0.78))
    dpo = _line((1.5, 0.40), (3.0, 0.45), (5.0, 0.50))
    verdict = compare("KTO", kto, "DPO", dpo, kl_match=0.1)
    assert verdict["kind"] == "exceeds" and verdict["winner"] == "KTO"
    assert "KTO's reward exceeds DPO's by" in verdict["text"]
    assert all(m["ci"][0] > 0 for m in verdict["matched"])  # every matched KL separates here
    assert {round(m["kl"], 6) for m in verdict["matched"]} == {2.0, 3.0, 4.0, 5.0}  # inside both ranges only
    wider = compare("KTO", kto, "DPO", dpo, kl_match=0.25)  # and the ends, matched to a point near enough
    assert {round(m["kl"], 6) for m in wider["matched"]} == {1.75, 2.0, 3.0, 4.0, 5.0, 5.5}
    flipped = compare("DPO", dpo, "KTO", kto)
    assert flipped["kind"] == "exceeds" and flipped["winner"] == "KTO"


def test_overlapping_intervals_cannot_tell_apart_and_say_how_many_samples_would():
    a = _line((2.0, 0.50), (4.0, 0.55), se=0.05, n=128)
    b = _line((2.5, 0.49), (3.5, 0.52), se=0.05, n=128)
    verdict = compare("KTO", a, "DPO", b)
    assert verdict["kind"] == "cannot tell apart" and "cannot tell apart at n = 128" in verdict["text"]
    needed = verdict["samples_needed"]
    assert needed > 128 and f"about {needed:,} samples per model" in verdict["text"]
    # at that n, the largest difference is (z + z_power) standard errors away from 0
    best = max(verdict["matched"], key=lambda m: abs(m["diff"]) / m["se"])
    shrunk = best["se"] * math.sqrt(128 / needed)
    assert abs(best["diff"]) / shrunk == pytest.approx(verdict["z"] + 0.8416, rel=0.02)


def test_points_at_different_kl_are_never_ranked():
    cheap = _line((1.0, 0.30), (2.0, 0.35))
    expensive = _line((10.0, 0.90), (14.0, 0.95))  # far higher reward, but bought at far higher KL
    verdict = compare("KTO", expensive, "DPO", cheap)
    assert verdict["kind"] == "no ranking" and not verdict["matched"]
    assert "never reach the same KL" in verdict["text"] and "exceeds" not in verdict["text"]


def test_a_point_with_lower_kl_and_higher_reward_dominates_without_a_matched_kl():
    # the imbalance ablation's shape: class weights stay near the start and gain; without them the
    # model runs far from it for nothing
    weighted, unweighted = _line((24.5, 0.56)), _line((97.4, 0.17), (120.0, 0.20))
    verdict = compare("weights auto", weighted, "weights 1.0", unweighted)
    assert verdict["kind"] == "dominates" and verdict["winner"] == "weights auto" and not verdict["matched"]
    assert "weights auto dominates weights 1.0: at KL 24.5" in verdict["text"]
    assert compare("weights 1.0", unweighted, "weights auto", weighted)["winner"] == "weights auto"
    # a reward interval that reaches the other's, or KLs whose intervals touch: no ranking
    assert (
        compare("A", _line((3.0, 0.40), se=0.03), "B", _line((10.0, 0.35), se=0.03))["kind"] == "no ranking"
    )
    assert compare("A", _line((10.0, 0.9), kl_se=6.0), "B", _line((20.0, 0.2)))["kind"] == "no ranking"


def test_single_points_match_within_the_kl_tolerance_only():
    a, b = _line((5.0, 0.8)), _line((5.5, 0.5))
    assert compare("A", a, "B", b, kl_match=0.25)["kind"] == "exceeds"
    assert compare("A", a, "B", b, kl_match=0.05)["kind"] == "dominates"  # lower KL, higher reward
    a, b = _line((5.5, 0.8)), _line((5.0, 0.5))  # the higher reward at the higher KL: never ranked
    assert compare("A", a, "B", b, kl_match=0.05)["kind"] == "no ranking"


def test_crossing_frontiers_say_so():
    a = _line((1.0, 0.8), (5.0, 0.3))
    b = _line((1.0, 0.3), (5.0, 0.8))
    assert compare("A", a, "B", b)["kind"] == "crosses"


def test_seeds_pool_into_one_point_per_beta():
    points = [
        Point(kl=k, kl_se=0.1, reward=r, reward_se=0.01, n=64, beta=0.1) for k, r in ((2, 0.5), (4, 0.7))
    ]
    (pooled,) = line(points)
    assert pooled.kl == 3 and pooled.reward == pytest.approx(0.6) and pooled.n == 128 and pooled.cells == 2
    assert pooled.reward_se == pytest.approx(0.1)  # the spread between seeds, larger than their own errors
    assert samples_needed(100, 0.0, 0.1, 1.96) is None


def test_conditions_become_each_cells_own_config(tmp_path, capsys):
    other = write_jsonl(tmp_path / "other.jsonl", toy_feedback(20, seed=9))
    study = _study(
        tmp_path,
        grid={"method": ["kto"], "beta": [0.1]},
        conditions={
            "heavy": {"kind": "downvoters", "fraction": 0.35, "heavy_users": 3,
                      "settings": {"none": {"data.user_balance": "none"}, "inverse": {"data.user_balance": "inverse"}}},
            "tweets": {"kind": "domain", "train": "builtin:vader-tweets"},
            "local": {"kind": "domain", "train": str(other)},
        },
        budget={"epochs": 2},
    )  # fmt: skip
    spec, base = load_study(study)
    from thumbs.study.spec import cells

    made = {cell.name: cell.overrides for cell in cells(spec, base)}
    assert set(made) == {"heavy-none-kto-b0.1-s0", "heavy-inverse-kto-b0.1-s0", "tweets-kto-b0.1-s0",
                         "local-kto-b0.1-s0"}  # fmt: skip
    heavy = made["heavy-inverse-kto-b0.1-s0"]
    assert heavy["data.condition"] == {"kind": "downvoters", "fraction": 0.35, "seed": 0, "heavy_users": 3,
                                       "down_rate": 0.95}  # fmt: skip
    assert heavy["data.user_balance"] == "inverse"
    assert heavy["train.epochs"] == 2 and heavy["train.max_steps"] is None  # the budget, in epochs
    assert made["local-kto-b0.1-s0"]["data.train"] == str(other)
    out = tmp_path / "plan"
    run_study(study, out, plan=True)  # a builtin set is ingested into the study folder, as a command
    printed = capsys.readouterr().out
    assert f"thumbs ingest builtin:vader-tweets --out {out / 'data' / 'vader-tweets'}" in printed
    assert f"data.train={out / 'data' / 'vader-tweets'}" in printed
    assert not (out / "data").exists()  # --plan runs nothing


def test_the_head_to_head_pair_is_the_best_one_at_matched_kl():
    from thumbs.study.versus import best_matched_pair

    def cell(name, kl, reward):
        return {"name": name, "result": {"kl": {"mean": kl}, "reward": {"mean": reward}}}

    kto = [cell("k1", 2.0, 0.5), cell("k2", 6.0, 0.9)]
    dpo = [cell("d1", 2.2, 0.6), cell("d2", 5.5, 0.7), cell("d3", 30.0, 2.0)]
    x, y = best_matched_pair(kto, dpo, kl_match=0.25)
    assert (x["name"], y["name"]) == ("k2", "d2")  # d3's reward is higher, but at five times the KL
    assert best_matched_pair(kto[:1], dpo[2:], kl_match=0.25) is None
