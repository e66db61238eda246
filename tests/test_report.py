"""thumbs compare: every run in one self-contained, legible HTML report and a terminal table."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_eval import make_run, write_events
from thumbs.errors import ThumbsError
from thumbs.eval.evaluation import evaluate
from thumbs.models import save_tiny
from thumbs.report.compare import compare, config_differences, load_runs

INJECTED = "<script>alert('x')</script> & <b>bold</b>"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Two evaluated runs that differ in method and learning rate, and one never evaluated."""
    root = tmp_path_factory.mktemp("report")
    save_tiny(root / "start", seed=0)
    write_events(root / "events.parquet")
    kto = make_run(root, "kto-lr1e-4", root / "start", train__learning_rate=1e-4)
    dpo = make_run(root, "dpo-lr5e-5", root / "start", method="dpo", train__learning_rate=5e-5)
    for run in (kto, dpo):
        evaluate(run, n=6, max_new_tokens=8, batch_size=6, progress=False)
    # Model output reaches the page: it must arrive escaped.
    result = json.loads((kto / "eval.json").read_text())
    result["samples"][0]["policy"] = INJECTED
    (kto / "eval.json").write_text(json.dumps(result))
    (root / "audit.json").write_text(
        json.dumps({"counts": {"events": 24, "desirable": 12}, "warnings": ["<i>heavy</i> downvoters"]})
    )
    pending = make_run(root, "not-evaluated", root / "start")
    return [kto, dpo, pending]


def _images(page: str) -> list[bytes]:
    uris = re.findall(r"<img[^>]*src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    return [base64.b64decode(uri) for uri in uris]


def test_report_has_every_run_decodable_plots_and_no_network(runs, tmp_path, capsys):
    out = compare(runs, tmp_path / "report.html", show=True)
    page = out.read_text()
    for run in runs:
        assert run.name in page
    images = _images(page)
    assert len(images) == 3  # win rate + AUC, reward vs KL, training curves
    from PIL import Image

    for data in images:
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.width >= 600 and image.height >= 200
    # Nothing is fetched: no scheme links, scripts, stylesheets or CSS urls.
    assert not re.search(r"https?://", page)
    assert not re.search(r"<script|<link|<iframe|@import|url\(", page, re.I)
    assert not re.search(r"(src|href)=['\"](?!data:)", page)
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "&lt;i&gt;heavy&lt;/i&gt; downvoters" in page  # the audit's warnings, escaped
    assert "not evaluated" in page

    terminal = capsys.readouterr().out
    for run in runs:
        assert run.name in terminal
    kto = json.loads((runs[0] / "eval.json").read_text())
    assert f"{kto['win_rate']:.2f} [{kto['win_rate_ci'][0]:.2f}, {kto['win_rate_ci'][1]:.2f}]" in terminal


def test_config_differences_show_only_keys_that_differ(runs):
    diffs = config_differences(load_runs(runs))
    assert diffs["method"] == ["kto", "dpo", "kto"]
    assert diffs["train.learning_rate"] == [1e-4, 5e-5, 5e-5]
    assert "output_dir" not in diffs and "kto.beta" not in diffs


def test_compare_command_and_errors(runs, tmp_path):
    from typer.testing import CliRunner

    from thumbs.cli import app

    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["compare", str(runs[0]), str(runs[1]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and "kto-lr1e-4" in result.output
    with pytest.raises(ThumbsError, match="run directory not found"):
        compare([tmp_path / "missing"], tmp_path / "x.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ThumbsError, match="not a run directory"):
        compare([tmp_path / "empty"], tmp_path / "x.html")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium_without_network(runs, tmp_path):
    out = compare(runs, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    flags = "--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update"
    command = [CHROMIUM, *flags.split(), "--disable-sync", "--no-first-run", f"--screenshot={shot}"]
    command += ["--window-size=1280,2400", out.resolve().as_uri()]
    subprocess.run(command, capture_output=True, timeout=90, check=False)
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size == (1280, 2400)
    dark = sum(image.point(lambda v: 255 if v < 128 else 0).histogram()[255:])
    assert dark > 5000  # text and plots drew, not a blank page


@pytest.mark.parametrize(
    "stops, ref_stops, flagged", [(0.0, 0.6, True), (0.25, 0.55, True), (0.4, 0.6, False), (0.1, 0.3, False)]
)
def test_a_policy_whose_answers_run_to_the_cap_is_flagged(tmp_path, stops, ref_stops, flagged):
    """The production rounds' policies all ran to the 48-token cap while the start stopped 52-66%
    of its answers earlier: their length and reward are the cap's. The reading says so."""
    from thumbs.report.runs import Run, headline

    ev = {
        "win_rate": 0.6, "win_rate_ci": [0.45, 0.73], "n": 48, "kl": {"mean": 12.0},
        "reward": {"policy": {"mean": 0.5}, "reference": {"mean": 0.4}},
        "length": {"policy": 30.0, "reference": 27.0, "stopped": {"policy": stops, "reference": ref_stops}},
        "sampling": {"max_new_tokens": 48}, "heldout_auc": 0.7,
    }  # fmt: skip
    reading = headline(Run("r", tmp_path, config={"method": "kto"}, eval=ev))["reading"]
    assert ("answers run to the 48-token cap" in reading) is flagged, reading
    if flagged:
        assert f"{stops:.0%} end before it, the reference's {ref_stops:.0%}" in reading


def test_headline_kl_is_the_per_token_estimate_with_its_error_and_an_old_eval_says_per_sequence(tmp_path):
    """The headline KL is the low-variance per-token estimate, ± its standard error; an eval.json
    from before that estimate existed shows its per-sequence KL, marked as such."""
    from thumbs.report.runs import Run, headline

    ev = {
        "win_rate": 0.6, "win_rate_ci": [0.45, 0.73], "n": 48,
        "kl": {"mean": 15.418, "stderr": 1.055}, "kl_tokens": {"mean": 15.955, "stderr": 0.711},
        "reward": {"policy": {"mean": 0.5}, "reference": {"mean": 0.4}},
        "length": {"policy": 30.0, "reference": 27.0},
    }  # fmt: skip
    assert headline(Run("r", tmp_path, config={"method": "kto"}, eval=ev))["KL"] == "16 ± 0.71"
    old = {k: v for k, v in ev.items() if k != "kl_tokens"}
    assert (
        headline(Run("r", tmp_path, config={"method": "kto"}, eval=old))["KL"] == "15.4 ± 1.1 (per sequence)"
    )


@pytest.mark.parametrize(
    "name, text, says",
    [
        ("eval.json", "{bad", "eval.json does not parse"),
        ("eval.json", '{"n": 3}', "win_rate is not a number"),
        (
            "eval.json",
            '{"n": 3, "win_rate": 0.5, "win_rate_ci": [0.2, NaN]}',
            "win_rate_ci is not two numbers",
        ),
        ("config.yaml", "method: kto\n  bad: [\n", "config.yaml does not parse"),
    ],
)
def test_a_damaged_run_file_stops_compare_with_its_name_not_a_traceback(tmp_path, name, text, says):
    """A damaged eval.json was shown as "not evaluated" (exit 0) or ended in a KeyError; a damaged
    config.yaml was read as no settings at all."""
    from typer.testing import CliRunner

    from thumbs.cli import app

    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("method: kto\n")
    (run / name).write_text(text)
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["compare", str(run), "--out", str(tmp_path / "x.html")]
    )
    assert result.exit_code == 2, result.output
    assert says in result.output and name in result.output
    assert not (tmp_path / "x.html").exists()
