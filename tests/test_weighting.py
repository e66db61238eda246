"""Training options on examples: class weights, user balancing, aggregation, agreement filter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thumbs.audit.weighting import (
    apply_feedback_options,
    deployment_weights,
    paper_weights,
    recommended_class_weights,
)
from thumbs.errors import ThumbsError


def examples(rows: list[tuple[str, str, bool, str | None]], **extra) -> pa.Table:
    """Examples from (prompt, completion, label, user_id) rows."""
    prompt, completion, label, user = (list(c) for c in zip(*rows, strict=True))
    return pa.table({"prompt": prompt, "completion": completion, "label": label, "user_id": user, **extra})


def heavy_and_ordinary(seed: int = 0) -> pa.Table:
    """One heavy downvoter (200 votes, 90% down) among 50 ordinary users (4 votes each, 30% down)."""
    rng = np.random.default_rng(seed)
    users = ["heavy"] * 200 + [f"user{i}" for i in range(50) for _ in range(4)]
    rate = np.where(np.array(users) == "heavy", 0.9, 0.3)
    down = rng.random(len(users)) < rate
    items = rng.integers(100, size=len(users))
    return pa.table(
        {
            "prompt": [f"p{i % 10}" for i in items],
            "completion": [f"c{i}" for i in items],
            "label": ~down,
            "user_id": users,
        }
    )


def user_totals(table: pa.Table) -> dict[str, float]:
    return table.to_pandas().groupby("user_id")["weight"].sum().to_dict()


# --- class weights -------------------------------------------------------------------------------


def test_paper_example_one_desirable_to_ten_undesirable():
    rule = paper_weights(1_000, 10_000)
    assert rule["undesirable_weight"] == 1.0
    assert rule["desirable_weight_range"] == pytest.approx([10.0, 13.333333], rel=1e-6)
    assert rule["desirable_weight"] == pytest.approx(10.0)  # the low end: nearest to no reweighting
    assert recommended_class_weights(1_000, 10_000) == pytest.approx((10.0, 1.0))


def test_paper_rule_with_more_desirable_weights_the_undesirable_class():
    desirable, undesirable = recommended_class_weights(10_000, 1_000)
    assert desirable == 1.0
    assert 1.0 <= desirable * 10_000 / (undesirable * 1_000) <= 4 / 3 + 1e-12
    assert undesirable == pytest.approx(7.5)  # ratio at 4/3, the nearest end of the interval


def test_paper_rule_leaves_a_ratio_already_inside_alone():
    assert recommended_class_weights(1_100, 1_000) == (1.0, 1.0)


def test_deployment_rate_is_mirrored():
    desirable, undesirable = recommended_class_weights(1_000, 9_000, deployment_positive_rate=0.7)
    assert undesirable == 1.0
    weighted_up = desirable * 1_000 / (desirable * 1_000 + undesirable * 9_000)
    assert weighted_up == pytest.approx(0.7)
    rule = deployment_weights(9_000, 1_000, 0.5)
    assert (rule["desirable_weight"], rule["undesirable_weight"]) == pytest.approx((1.0, 9.0))


@pytest.mark.parametrize(
    ("n_desirable", "n_undesirable", "rate"), [(0, 10, None), (10, 0, None), (5, 5, 1.0), (5, 5, 0.0)]
)
def test_class_weights_refuse_what_cannot_be_balanced(n_desirable, n_undesirable, rate):
    with pytest.raises(ThumbsError) as err:
        recommended_class_weights(n_desirable, n_undesirable, deployment_positive_rate=rate)
    assert err.value.hint


# --- user balancing ------------------------------------------------------------------------------


def test_inverse_gives_a_heavy_downvoter_the_weight_of_an_ordinary_user():
    table = heavy_and_ordinary()
    out, summary = apply_feedback_options(table, user_balance="inverse")
    totals = user_totals(out)
    assert totals["heavy"] == pytest.approx(totals["user0"])
    assert np.allclose(list(totals.values()), totals["user0"])
    assert out.column("weight").to_numpy().mean() == pytest.approx(1.0)  # normalised, as the summary says
    assert summary["user_balance"]["largest_user_share_before"] == pytest.approx(0.5)
    assert summary["user_balance"]["largest_user_share_after"] == pytest.approx(1 / 51)
    assert "total weight is unchanged" in summary["user_balance"]["normalised"]


def test_inverse_counts_each_anonymous_vote_as_its_own_user():
    table = examples(
        [("p", "a", True, "u"), ("p", "a", True, "u"), ("p", "b", False, None), ("p", "c", False, None)]
    )
    out, summary = apply_feedback_options(table, user_balance="inverse")
    # three users of total weight 4/3 each: u's two votes 2/3, each anonymous vote 4/3
    assert out.column("weight").to_pylist() == pytest.approx([2 / 3, 2 / 3, 4 / 3, 4 / 3])
    assert summary["user_balance"]["users"] == 1
    assert summary["user_balance"]["anonymous_examples"] == 2


def test_cap_holds_and_leaves_small_users_in_proportion():
    table = heavy_and_ordinary()
    out, summary = apply_feedback_options(table, user_balance="cap", max_user_share=0.05)
    totals = user_totals(out)
    shares = {u: w / sum(totals.values()) for u, w in totals.items()}
    assert max(shares.values()) <= 0.05 + 1e-12
    assert shares["heavy"] == pytest.approx(0.05)
    assert summary["user_balance"]["users_capped"] == 1
    assert np.allclose(
        [totals[f"user{i}"] for i in range(50)], totals["user0"]
    )  # untouched relative to each other
    assert sum(totals.values()) == pytest.approx(table.num_rows)  # total weight kept


def test_cap_with_too_few_users_makes_them_equal_and_says_so():
    table = examples([("p", "a", True, "u")] * 3 + [("p", "b", False, "v")])
    out, summary = apply_feedback_options(table, user_balance="cap", max_user_share=0.2)
    totals = user_totals(out)
    assert totals["u"] == pytest.approx(totals["v"])
    assert "no split keeps every share" in summary["user_balance"]["note"]


def test_input_weights_are_kept_and_multiplied():
    table = examples([("p", "a", True, "u"), ("p", "b", False, "v")], weight=[2.0, 1.0])
    out, _ = apply_feedback_options(table)
    assert out.column("weight").to_pylist() == [2.0, 1.0]
    out, _ = apply_feedback_options(table, user_balance="inverse")
    assert out.column("weight").to_pylist() == pytest.approx([1.5, 1.5])  # equal users, total 3 kept


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.booleans(), st.sampled_from(["a", "b", "c", "d", None])),
        min_size=1,
        max_size=40,
    ),
    st.floats(0.05, 1.0),
)
def test_balancing_invariants_on_any_log(rows, share):
    table = examples([("p", f"c{item}", label, user) for item, label, user in rows])
    capped, _ = apply_feedback_options(table, user_balance="cap", max_user_share=share)
    weights = capped.to_pandas()
    voters = weights["user_id"].where(
        weights["user_id"].notna(), pd.Series(range(len(weights))).astype(str) + "!"
    )
    totals = weights.groupby(voters)["weight"].sum()
    assert weights["weight"].sum() == pytest.approx(len(rows))
    if len(totals) * share >= 1:
        assert totals.max() / totals.sum() <= share + 1e-9
    inverse, _ = apply_feedback_options(table, user_balance="inverse")
    totals = inverse.to_pandas().groupby(voters)["weight"].sum()
    assert np.allclose(totals, totals.iloc[0])


# --- aggregation and agreement -------------------------------------------------------------------

VOTES = [
    ("p", "a", True, "u1"),
    ("p", "a", True, "u2"),
    ("p", "a", False, "u3"),  # a: 2 up, 1 down
    ("p", "b", False, "u1"),
    ("p", "b", False, "u2"),
    ("p", "b", False, "u3"),
    ("p", "b", True, "u4"),  # b: 1 up, 3 down
    ("q", "c", True, "u1"),
    ("q", "c", False, "u2"),  # c: a tie
    ("q", "d", True, "u5"),  # d: one vote
]


def test_majority_gives_one_example_per_completion_weighted_by_agreement():
    out, summary = apply_feedback_options(
        examples(VOTES, split=["train"] * 8 + ["eval"] * 2), aggregate="majority"
    )
    rows = {r["completion"]: r for r in out.to_pylist()}
    assert set(rows) == {"a", "b", "d"}
    assert (rows["a"]["label"], rows["a"]["weight"]) == (True, pytest.approx(2 / 3))
    assert (rows["b"]["label"], rows["b"]["weight"], rows["b"]["votes"]) == (False, pytest.approx(0.75), 4)
    assert (rows["d"]["label"], rows["d"]["weight"], rows["d"]["split"]) == (True, 1.0, "eval")
    assert summary["aggregate"] == {
        "mode": "majority",
        "completions": 4,
        "ties_dropped": 1,
        "weight": "agreement: the share of votes on the chosen side (each vote once)",
    }
    assert "user_id" not in out.column_names


def test_mean_lets_balanced_weights_decide_where_majority_counts_heads():
    # two heavy users (10 votes each) vote e down; one light user votes it up
    rows = [("p", "e", False, "h1"), ("p", "e", False, "h2"), ("p", "e", True, "light")]
    rows += [("p", f"x{i}", False, h) for h in ("h1", "h2") for i in range(9)]
    table = examples(rows)
    majority, summary = apply_feedback_options(table, user_balance="inverse", aggregate="majority")
    assert {r["completion"]: r["label"] for r in majority.to_pylist()}["e"] is False
    assert "majority counts each vote once" in summary["notes"][0]
    mean, _ = apply_feedback_options(table, user_balance="inverse", aggregate="mean")
    e = {r["completion"]: r for r in mean.to_pylist()}["e"]
    assert e["label"] is True
    assert e["agreement"] == pytest.approx(1 / (1 + 0.1 + 0.1))


def test_min_agreement_drops_split_completions_and_counts_them():
    out, summary = apply_feedback_options(examples(VOTES), min_agreement=0.7)
    assert sorted(set(out.column("completion").to_pylist())) == ["b", "d"]
    assert summary["min_agreement"] == {"threshold": 0.7, "completions_dropped": 2, "examples_dropped": 5}
    assert summary["examples_out"] == 5


def test_auto_weights_come_from_the_result_not_the_example_weights():
    table = examples([("p", f"c{i}", i < 2, "u") for i in range(20)])
    out, summary = apply_feedback_options(table, weights="auto")
    assert out.column("weight").to_pylist() == [1.0] * 20  # class weights are not folded in
    assert (summary["desirable_weight"], summary["undesirable_weight"]) == pytest.approx((9.0, 1.0))
    _, summary = apply_feedback_options(table, weights="auto", deployment_positive_rate=0.5)
    assert summary["desirable_weight"] == pytest.approx(9.0)
    _, summary = apply_feedback_options(table)
    assert (summary["desirable_weight"], summary["undesirable_weight"]) == (1.0, 1.0)


def test_pandas_in_pandas_out_and_extra_columns_kept():
    frame = examples(VOTES[:3], split=["train"] * 3).to_pandas()
    out, _ = apply_feedback_options(frame, user_balance="inverse")
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["prompt", "completion", "label", "user_id", "split", "weight"]


# --- errors a user can act on --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"user_balance": "equal"}, "user_balance"),
        ({"aggregate": "median"}, "aggregate"),
        ({"weights": "paper"}, "weights"),
        ({"deployment_positive_rate": 0.7}, "deployment_positive_rate"),
        ({"max_user_share": 0.0, "user_balance": "cap"}, "max_user_share"),
        ({"min_agreement": 1.5}, "min_agreement"),
        ({"min_agreement": 1.0, "aggregate": "votes"}, "min_agreement"),
    ],
)
def test_bad_options_name_the_option(options, field):
    table = examples(VOTES[:3])  # agreement 2/3, so min_agreement 1.0 drops everything
    with pytest.raises(ThumbsError) as err:
        apply_feedback_options(table, **options)
    assert err.value.field == field
    assert err.value.hint


def test_bad_tables_are_refused_clearly():
    with pytest.raises(ThumbsError, match="lack the column"):
        apply_feedback_options(pa.table({"prompt": ["p"], "label": [True]}))
    with pytest.raises(ThumbsError, match="no examples"):
        apply_feedback_options(examples(VOTES).slice(0, 0))
    with pytest.raises(ThumbsError, match="true/false") as err:
        apply_feedback_options(pa.table({"prompt": ["p"], "completion": ["c"], "label": [1]}))
    assert err.value.field == "label"
    with pytest.raises(ThumbsError, match="have no label") as err:
        apply_feedback_options(
            pa.table({"prompt": ["p", "p"], "completion": ["c", "d"], "label": [True, None]})
        )
    assert err.value.row == 1
    with pytest.raises(ThumbsError, match="finite number") as err:
        apply_feedback_options(examples(VOTES[:2], weight=[1.0, -2.0]))
    assert (err.value.row, err.value.field) == (1, "weight")
    with pytest.raises(ThumbsError, match="every completion was a tie"):
        apply_feedback_options(examples(VOTES[7:9]), aggregate="majority")
