"""Head to head inside a study: for two methods under one condition and setting, their best cells at
matched KL sampled on the same prompts and random streams (``thumbs eval A --against B``'s code),
so the difference is paired, not two unpaired means.

The pair: of the cells whose token-level KLs lie within ``kl_match`` of each other, the two with the
highest rewards together. No pair within the tolerance: no head-to-head (the frontier verdict says
why). Results are ``versus/A--B.json``, reused when their settings match.
"""

from __future__ import annotations

from pathlib import Path


def best_matched_pair(a: list[dict], b: list[dict], kl_match: float) -> tuple[dict, dict] | None:
    """The cells of ``a`` and ``b`` (done, evaluated) at matched KL with the highest rewards together."""
    pairs = []
    for x in a:
        for y in b:
            kx, ky = x["result"]["kl"]["mean"], y["result"]["kl"]["mean"]
            if abs(kx - ky) <= kl_match * max(abs(kx), abs(ky), 1e-12):
                pairs.append((x["result"]["reward"]["mean"] + y["result"]["reward"]["mean"], x, y))
    if not pairs:
        return None
    _, x, y = max(pairs, key=lambda p: p[0])
    return x, y


def head_to_heads(spec, records: list[dict], comparisons: list[dict], out: Path, say=print) -> list[dict]:
    """One head-to-head per method comparison (A's best cell against B's at matched KL), as records."""
    from thumbs.eval.versus import SETTINGS, head_to_head, saved_versus

    done = [r for r in records if r["status"] == "done" and r["result"]]
    results = []
    for comparison in comparisons:
        line_a, line_b = comparison.get("lines", (None, None))
        if line_a is None or line_a[2] == line_b[2]:  # settings against each other: the frontier only
            continue
        cells_a = [r for r in done if (r["condition"], r["variant"], r["method"]) == tuple(line_a)]
        cells_b = [r for r in done if (r["condition"], r["variant"], r["method"]) == tuple(line_b)]
        pair = best_matched_pair(cells_a, cells_b, spec.kl_match)
        if pair is None:
            continue
        x, y = pair
        path = out / "versus" / f"{x['name']}--{y['name']}.json"
        result = saved_versus(path, spec.eval.judge, **{k: getattr(spec.eval, k) for k in SETTINGS})
        if result is None:
            say(f"thumbs study: {x['name']} against {y['name']}, head to head")
            e = spec.eval
            try:
                result = head_to_head(
                    out / x["dir"], out / y["dir"], prompts=e.prompts, judge=e.judge, n=e.n, seed=e.seed,
                    max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p,
                    batch_size=e.batch_size, out=path, progress=False,
                )  # fmt: skip
            except Exception as err:  # noqa: BLE001 — the frontier stands without it; say why
                results.append({"a": x["name"], "b": y["name"], "error": getattr(err, "message", str(err))})
                continue
        results.append(_summary(comparison, x, y, result, path, out))
    return results


def _summary(comparison: dict, x: dict, y: dict, result: dict, path: Path, out: Path) -> dict:
    diff = result.get("reward_diff")
    low, high = result["win_rate_ci"]
    kl = f"KL {x['result']['kl']['mean']:.3g} and {y['result']['kl']['mean']:.3g}"
    if diff and diff.get("ci") and diff["ci"][0] is not None:
        lo, hi = diff["ci"]
        reading = "exceeds" if lo > 0 else "falls below" if hi < 0 else "cannot be told from"
        said = (f"{comparison['a']}'s reward {reading} {comparison['b']}'s: {diff['mean']:+.3g} [{lo:+.3g}, {hi:+.3g}], "
                f"paired 95%")  # fmt: skip
    else:
        said = f"{comparison['a']} wins {result['win_rate']:.2f} [{low:.2f}, {high:.2f}] of the pairs"
    text = f"head to head ({x['name']} against {y['name']}, {kl}, n = {result['n']}, same prompts and streams): {said}"
    return {
        "a": x["name"], "b": y["name"], "condition": x["condition"], "file": str(path.relative_to(out)),
        "reward_diff": diff, "win_rate": result["win_rate"], "win_rate_ci": result["win_rate_ci"],
        "n": result["n"], "text": text,
    }  # fmt: skip
