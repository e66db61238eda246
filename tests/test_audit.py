"""The audit against logs whose truth is set, the real VADER ratings, and the `thumbs audit` command."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from thumbs.audit.findings import audit
from thumbs.audit.noise import flip_rate_from_disagreement
from thumbs.audit.voters import binomial_upper_tail
from thumbs.cli import app
from thumbs.errors import ThumbsError


def events(prompt, completion, label, user_id, **extra) -> pa.Table:
    """An events table in the ingest schema (event_id, ..., meta)."""
    n = len(label)
    columns = {
        "event_id": [f"e{i}" for i in range(n)],
        "prompt": list(prompt),
        "completion": list(completion),
        "label": pa.array(np.asarray(label, dtype=bool)),
        "user_id": pa.array(list(user_id), type=pa.string()),
        "timestamp": pa.array([None] * n, type=pa.timestamp("us", tz="UTC")),
        "source": ["synthetic"] * n,
        "weight": np.ones(n),
        "conversation_id": pa.array([None] * n, type=pa.string()),
        "split": ["train"] * n,
        "meta": pa.array([None] * n, type=pa.string()),
    }
    columns.update(extra)
    return pa.table(columns)


def flipped_log(flip_rate: float, seed: int, n_votes: int = 20_000) -> pa.Table:
    """20,000 votes by 1,000 users on 4,000 completions with a set true label, each vote flipped at flip_rate."""
    rng = np.random.default_rng(seed)
    items = rng.integers(4_000, size=n_votes)
    truth = rng.random(4_000) < 0.6
    label = truth[items] ^ (rng.random(n_votes) < flip_rate)
    users = rng.integers(1_000, size=n_votes)
    return events(
        [f"prompt {i % 700}" for i in items], [f"answer {i}" for i in items], label, [f"u{u}" for u in users]
    )


def planted_downvoters(seed: int = 1) -> tuple[pa.Table, set[str], set[str]]:
    """Ordinary users (log-normal volume, downvote rates around 0.3) plus three kinds of special users.

    Planted: 4 users with 250 votes each, 90% down. Not to be flagged: 5 power users (300 votes at
    the ordinary rate) and 20 harsh but light users (8 votes, 80% down).
    """
    rng = np.random.default_rng(seed)
    volumes = np.maximum(1, rng.lognormal(np.log(15), 0.7, size=600).round()).astype(int)
    rates = rng.beta(6, 14, size=600)
    users = [(f"user{i}", v, r) for i, (v, r) in enumerate(zip(volumes, rates, strict=True))]
    planted = [(f"grump{i}", 250, 0.9) for i in range(4)]
    power = [(f"power{i}", 300, 0.3) for i in range(5)]
    harsh = [(f"harsh{i}", 8, 0.8) for i in range(20)]
    everyone = users + planted + power + harsh
    user_id = np.repeat([u for u, _, _ in everyone], [v for _, v, _ in everyone])
    down = rng.random(len(user_id)) < np.repeat([r for _, _, r in everyone], [v for _, v, _ in everyone])
    items = rng.integers(3_000, size=len(user_id))
    table = events([f"p{i % 300}" for i in items], [f"c{i}" for i in items], ~down, user_id)
    return table, {u for u, _, _ in planted}, {u for u, _, _ in power + harsh}


# --- noise ---------------------------------------------------------------------------------------


def test_inversion_is_the_root_of_the_flip_model():
    for eps in (0.0, 0.05, 0.1, 0.25, 0.5):
        assert flip_rate_from_disagreement(2 * eps * (1 - eps)) == pytest.approx(eps)
    assert flip_rate_from_disagreement(0.7) == 0.5


@pytest.mark.parametrize(("flip_rate", "seed"), [(0.1, 10), (0.25, 25)])
def test_injected_flip_rate_is_recovered(flip_rate, seed):
    noise = audit(flipped_log(flip_rate, seed))["noise"]
    print(f"\ninjected flip rate {flip_rate}: estimated {noise['flip_rate']:.4f}, 95% CI {noise['ci95']}")
    assert noise["flip_rate"] == pytest.approx(flip_rate, abs=0.03)
    assert noise["ci95"][0] <= flip_rate <= noise["ci95"][1]
    assert noise["completions"] > 3_500  # completions with two or more voters
    assert noise["ci95"][1] - noise["ci95"][0] < 0.03


def test_a_users_repeat_votes_count_once():
    # u1 votes a up twice; u2 votes it down: one disagreeing pair of voters, not two of three pairs
    table = events(["p"] * 3, ["a"] * 3, [True, True, False], ["u1", "u1", "u2"])
    noise = audit(table)["noise"]
    assert noise["pairwise_disagreement"] == 1.0
    assert (noise["completions"], noise["voters"], noise["voter_pairs"]) == (1, 2, 1)
    assert noise["ci95"] is None  # one completion gives no interval


# --- users ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_planted_heavy_downvoters_are_found_and_no_one_else(seed):
    table, planted, decoys = planted_downvoters(seed)
    users = audit(table)["users"]
    flagged = {u["user_id"] for u in users["heavy_downvoters"]["users"]}
    assert flagged == planted
    assert not flagged & decoys
    heavy = users["heavy_downvoters"]
    assert 0.2 < heavy["median_user_downvote_rate"] < 0.4
    assert heavy["median_user_downvote_rate"] + 0.3 < heavy["rate_threshold"] < 0.9
    assert heavy["share_of_downvotes"] == pytest.approx(
        sum(u["downvotes"] for u in heavy["users"]) / (~table.column("label").to_numpy()).sum()
    )


def test_heavy_downvoter_thresholds_are_options():
    table, planted, _ = planted_downvoters()
    assert audit(table, heavy_rate_margin=0.7)["users"]["heavy_downvoters"]["count"] == 0
    assert audit(table, heavy_rate_z=25)["users"]["heavy_downvoters"]["count"] == 0
    assert audit(table, heavy_min_votes=1_000)["users"]["heavy_downvoters"]["count"] == 0
    assert audit(table, heavy_volume_ratio=1.0, heavy_min_votes=5)["users"]["heavy_downvoters"]["count"] >= 4


def test_concentration_gini_and_rates_on_a_small_log():
    # ten users: u0 casts 10 votes (all down), u1..u9 one up-vote each; plus two anonymous votes
    users = ["u0"] * 10 + [f"u{i}" for i in range(1, 10)] + [None, None]
    label = [False] * 10 + [True] * 9 + [True, False]
    report = audit(events(["p"] * 21, [f"c{i}" for i in range(21)], label, users))
    top = report["users"]["top_1pct"]
    assert (top["users"], top["share_of_votes"], top["share_of_downvotes"]) == (1, 10 / 21, 10 / 11)
    # Gini of (1 × 9, 10): 1 − 2·(area under the Lorenz curve)
    shares = np.cumsum(sorted([1] * 9 + [10])) / 19
    assert report["users"]["gini_votes_per_user"] == pytest.approx(
        1 - 2 * (shares.sum() - shares[-1] / 2) / 10
    )
    assert report["users"]["downvote_rates"]["users_counted"] == 1  # only u0 has five or more votes
    assert report["counts"]["users"] == 10
    assert report["counts"]["anonymous_events"] == 2
    assert any("no user_id" in w and "left out" in w for w in report["warnings"])


def test_binomial_tail_matches_direct_sums():
    from math import comb

    for k, n, p in [(0, 5, 0.3), (3, 5, 0.3), (5, 5, 0.3), (40, 50, 0.3), (7, 20, 0.5)]:
        direct = sum(comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))
        assert binomial_upper_tail(k, n, p) == pytest.approx(direct, rel=1e-9, abs=1e-300)


# --- balance and conflicts -----------------------------------------------------------------------


def test_one_to_ten_log_gives_the_papers_weights_and_a_warning():
    label = [True] * 100 + [False] * 1_000
    report = audit(events(["p"] * 1_100, [f"c{i}" for i in range(1_100)], label, ["u"] * 1_100))
    rule = report["weights"]["recommended"]
    assert (rule["desirable_weight"], rule["undesirable_weight"]) == (pytest.approx(10.0), 1.0)
    assert rule["desirable_weight_range"] == pytest.approx([10.0, 13.3333333])
    assert report["weights"]["deployment"] is None
    assert any("91% of votes are thumbs-down" in w and "desirable_weight 10" in w for w in report["warnings"])
    mirrored = audit(events(["p"] * 1_100, ["c"] * 1_100, label, ["u"] * 1_100), deployment_positive_rate=0.5)
    assert mirrored["weights"]["deployment"]["desirable_weight"] == pytest.approx(10.0)


def test_conflicts_count_completions_voted_both_ways():
    prompt = ["p", "p", "p", "p", "q", "q", "q"]
    completion = ["a", "a", "a", "b", "a", "a", "c"]  # (q, a) is another completion than (p, a)
    label = [True, False, True, True, False, False, True]
    report = audit(events(prompt, completion, label, ["u1", "u2", "u3", "u1", "u1", "u2", "u3"]))
    conflicts = report["conflicts"]
    assert conflicts["completions_with_both"] == 1
    assert conflicts["share_of_completions"] == pytest.approx(1 / 4)
    assert conflicts["share_of_multi_vote_completions"] == pytest.approx(1 / 2)
    assert conflicts["examples"] == [{"prompt": "p", "completion": "a", "up": 2, "down": 1}]
    assert report["counts"]["completions"] == 4 and report["counts"]["prompts"] == 2


def test_all_anonymous_and_one_class_logs_still_audit():
    report = audit(events(["p"] * 4, ["a", "a", "b", "b"], [False] * 4, [None] * 4))
    assert report["users"]["users"] == 0
    assert report["weights"]["recommended"] is None
    assert report["noise"]["flip_rate"] == 0.0
    assert any("Every vote is thumbs-down" in w for w in report["warnings"])


# --- the real VADER ratings ----------------------------------------------------------------------


def vader_movie_events() -> tuple[pa.Table, float]:
    """One event per individual rating (label = rating > 0, rating 0 dropped), and the direct disagreement.

    Direct disagreement: the share of individual nonzero ratings whose sign differs from the sign of
    their text's mean rating (texts with mean exactly 0 left out).
    """
    from thumbs.data.vader import load_ratings

    try:
        rated = load_ratings("movies")
    except ThumbsError as err:
        pytest.skip(f"VADER ratings unavailable: {err.message}")
    ratings = np.concatenate([np.asarray(r.ratings) for r in rated])
    text = np.repeat(np.arange(len(rated)), [len(r.ratings) for r in rated])
    mean = np.repeat([r.mean_rating for r in rated], [len(r.ratings) for r in rated])
    keep = ratings != 0
    direct = keep & (mean != 0)
    disagreement = float(((ratings[direct] > 0) != (mean[direct] > 0)).mean())
    completions = np.array([r.text for r in rated], dtype=object)[text[keep]]
    meta = [json.dumps({"text_id": rated[t].text_id, "rating": int(v), "corpus": "movies"}) for t, v in
            zip(text[keep], ratings[keep], strict=True)]  # fmt: skip
    table = events(
        ['[{"role": "user", "content": "Write a one-sentence movie review."}]'] * int(keep.sum()),
        completions,
        ratings[keep] > 0,
        [None] * int(keep.sum()),
        source=["builtin:vader-movies"] * int(keep.sum()),
        meta=meta,
    )
    return table, disagreement


def test_vader_noise_estimate_is_close_to_the_raters_own_disagreement():
    """The estimate and the direct measure agree within 0.01 (absolute).

    They are not the same quantity: the direct measure is the minority share per text (taste, not
    flips, for ambiguous snippets, and biased up because the mean is taken from the same ratings),
    the estimate inverts mean pairwise disagreement under one flip rate (at most the mean minority
    share for mixed items). 0.01 is about a fifth of either value: enough to say they tell the same
    story, tight enough that reporting the pairwise disagreement itself (0.09) would fail.
    """
    table, direct = vader_movie_events()
    noise = audit(table)["noise"]
    print(
        f"\nVADER movies: {table.num_rows} votes on {noise['completions']} texts with ≥2 voters; "
        f"estimated flip rate {noise['flip_rate']:.4f} (95% CI {noise['ci95'][0]:.4f}–{noise['ci95'][1]:.4f}), "
        f"pairwise disagreement {noise['pairwise_disagreement']:.4f}; "
        f"individual rating vs sign of the text's mean: {direct:.4f}"
    )
    assert noise["flip_rate"] == pytest.approx(direct, abs=0.01)
    assert 0.02 < noise["flip_rate"] < 0.1


# --- the command ---------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_writes_audit_json_and_prints_a_summary(tmp_path):
    table, planted, _ = planted_downvoters()
    pq.write_table(table, tmp_path / "events.parquet")
    result = runner.invoke(app, ["audit", str(tmp_path), "--deployment-positive-rate", "0.7"])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "audit.json").read_text())
    assert set(written) == {"counts", "weights", "users", "conflicts", "noise", "warnings"}
    assert written["counts"]["events"] == table.num_rows
    assert written["weights"]["deployment"]["deployment_positive_rate"] == 0.7
    assert {u["user_id"] for u in written["users"]["heavy_downvoters"]["users"]} == planted
    assert "Feedback audit" in result.output
    assert "heavy downvoters" in result.output and "4 user(s) cast" in result.output


def test_cli_json_and_out(tmp_path):
    pq.write_table(flipped_log(0.1, 3, n_votes=2_000), tmp_path / "events.parquet")
    out = tmp_path / "reports" / "mine.json"
    result = runner.invoke(app, ["audit", str(tmp_path / "events.parquet"), "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == json.loads(out.read_text())
    assert not (tmp_path / "audit.json").exists()


def test_cli_errors_are_clear(tmp_path):
    result = runner.invoke(app, ["audit", str(tmp_path)])
    assert result.exit_code == 2
    assert "events file not found" in result.output and "thumbs ingest" in result.output

    pq.write_table(pa.table({"prompt": ["p"], "label": [True]}), tmp_path / "events.parquet")
    result = runner.invoke(app, ["audit", str(tmp_path)])
    assert result.exit_code == 2 and "no 'completion' column" in result.output

    pq.write_table(events([], [], [], []), tmp_path / "events.parquet")
    result = runner.invoke(app, ["audit", str(tmp_path)])
    assert result.exit_code == 2 and "no events to audit" in result.output

    (tmp_path / "bad.parquet").write_text("not parquet")
    result = runner.invoke(app, ["audit", str(tmp_path / "bad.parquet")])
    assert result.exit_code == 2 and "cannot read it as Parquet" in result.output

    with pytest.raises(ThumbsError) as err:
        audit(events(["p"], ["c"], [True], ["u"]), deployment_positive_rate=1.5)
    assert err.value.field == "deployment_positive_rate"
