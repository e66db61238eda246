"""One round of `thumbs iterate` (see thumbs.iterate.rounds): each step reuses its output when a
previous invocation wrote it whole, and otherwise clears what a crash left and does it again."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from thumbs.config import Config
from thumbs.errors import ThumbsError
from thumbs.folders import write_text
from thumbs.iterate.feedback import collect, feedback_path, jsonl
from thumbs.iterate.settings import IterateSettings


def _say(number: int, text: str) -> None:
    print(f"\n━━ round {number} · {text} " + "━" * max(0, 60 - len(text)), flush=True)


def _cleared(path: Path) -> Path:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _answers(settings: IterateSettings, folder: Path, number: int, prompts: list, start: str, device: str):
    from thumbs.iterate.answers import answer

    path = folder / "answers.jsonl"
    if path.exists():
        return _read_jsonl(path)
    rows = answer(
        start, prompts, settings.samples_per_prompt,
        max_new_tokens=settings.max_new_tokens, seed=settings.seed * 1000 + number,
        temperature=settings.temperature, top_p=settings.top_p, batch_size=settings.batch_size, device=device,
    )  # fmt: skip
    if not rows:
        raise ThumbsError(f"round {number}: the policy gave only empty answers", file=start,
                          hint="raise iterate.max_new_tokens, or check the model")  # fmt: skip
    write_text(path, jsonl(rows))
    return rows


def _ingest_and_audit(settings: IterateSettings, folder: Path) -> tuple[dict, dict]:
    """The round's feedback log through the real ``ingest`` into ``data/``, then ``audit``."""
    from thumbs.audit.findings import audit
    from thumbs.data.ingest import ingest

    data, audited = folder / "data", folder / "audit.json"
    if audited.exists():
        return json.loads((data / "manifest.json").read_text()), json.loads(audited.read_text())
    _cleared(data)
    manifest = ingest([str(feedback_path(folder))], data, eval_fraction=settings.eval_fraction)
    report = audit(data)
    write_text(audited, json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    return manifest, report


def round_config(cfg: Config, settings: IterateSettings, folder: Path, number: int, start: str,
                 original: str, previous_adapter: str | None) -> Config:  # fmt: skip
    """The round's training config: the user's, trained on this round's data from its start."""
    rcfg = cfg.model_copy(deep=True)
    rcfg.output_dir = str(folder / "run")
    rcfg.data.train, rcfg.data.eval = str(folder / "data"), None
    rcfg.train.seed = cfg.train.seed + number - 1  # a fresh adapter draw and data order per round
    if settings.reference == "original":
        rcfg.model.name_or_path, rcfg.model.adapter = original, previous_adapter
    else:
        rcfg.model.name_or_path = start
    if cfg.model.lora.enabled:
        rcfg.model.merge_lora = True  # final/merged: the next round's start, or the round's policy
    return rcfg


def _train(rcfg: Config, number: int) -> Path:
    from thumbs.train.loop import train

    run_dir = Path(rcfg.output_dir)
    if (run_dir / "final").exists():
        print(f"thumbs: round {number}: reusing the finished run in {run_dir}")
        return run_dir
    if (run_dir / "checkpoints").exists():
        train(rcfg, resume=True)
        return run_dir
    _cleared(run_dir)  # started, but stopped before its first checkpoint
    train(rcfg)
    return run_dir


def _eval_prompts(folder: Path, answers: list[dict]) -> tuple[list | None, str]:
    """The round's held-out prompts (its eval split), or all prompts answered when none is held out."""
    from thumbs.data.store import read_events

    if read_events(folder / "data", split="eval").num_rows:
        return None, "the round's eval split (prompts held out of training)"
    asked = list(dict.fromkeys(a["prompt"] for a in answers))
    return asked, "the prompts answered this round (none held out: raise iterate.eval_fraction)"


def _evaluate(settings, folder: Path, run_dir: Path, number: int, answers: list[dict], start: str,
              original: str, progress: bool) -> dict:  # fmt: skip
    """eval.json: the round's model against its start and against the original model."""
    from thumbs.eval.evaluation import evaluate

    path = folder / "eval.json"
    if path.exists():
        return json.loads(path.read_text())
    prompts, prompt_note = _eval_prompts(folder, answers)
    settled = "start" if settings.reference == "start" else "original"  # the run's own reference
    common = dict(
        prompts=prompts, judge=settings.eval_judge or settings.judge, n=settings.eval_n, seed=settings.seed,
        max_new_tokens=settings.eval_max_new_tokens or settings.max_new_tokens,
        batch_size=settings.batch_size, max_heldout=settings.eval_heldout, progress=progress,
    )  # fmt: skip
    results = {}
    for against, model in (("start", start), ("original", original)):
        if against == "original" and start == original:
            results[against] = {**results["start"], "note": "round 1 starts from the original model"}
            continue
        partial = folder / f"eval-{against}.json"
        if partial.exists():
            results[against] = json.loads(partial.read_text())
            continue
        reference = None if against == settled else model
        print(f"thumbs: round {number}: evaluating against the {against} model")
        results[against] = evaluate(run_dir, reference=reference, out=partial, **common)
    combined = {
        "prompts": prompt_note,
        "against_start": results["start"],
        "against_original": results["original"],
    }
    write_text(path, json.dumps(combined, indent=2, ensure_ascii=False) + "\n")
    for against in ("start", "original"):
        _cleared(folder / f"eval-{against}.json")
    return combined


def headline(result: dict) -> dict[str, Any]:
    """The numbers iterate.json keeps of one evaluation."""
    return {
        "reference": result["reference"],
        "win_rate": result["win_rate"],
        "win_rate_ci": result["win_rate_ci"],
        "reward": result["reward"],
        "kl": result["kl"],
        "length": {
            k: result["length"][k] for k in ("policy", "reference", "stopped") if k in result["length"]
        },
        "heldout_auc": result.get("heldout_auc"),
    }


def run_round(
    cfg: Config,
    settings: IterateSettings,
    folder: Path,
    number: int,
    prompts: list,
    *,
    start: str,
    original: str,
    previous_adapter: str | None,
    feedback_file: str | Path | None,
    device: str,
    progress: bool,
) -> dict | None:
    """Run one round into ``folder``; its summary for iterate.json, or None while it waits for votes."""
    started = time.perf_counter()
    _say(number, f"the policy answers {len(prompts)} prompts × {settings.samples_per_prompt}")
    answers = _answers(settings, folder, number, prompts, start, device)
    source = folder / "feedback-source.json"
    if source.exists():
        info = json.loads(source.read_text())
    else:
        _say(number, f"feedback: {settings.feedback}")
        info = collect(settings, answers, folder, number, feedback_file=feedback_file, device=device)
        if info is None:
            return None
        write_text(source, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    _say(number, "ingest and audit the feedback log")
    manifest, report = _ingest_and_audit(settings, folder)
    heavy = [str(u["user_id"]) for u in report["users"]["heavy_downvoters"]["users"]]
    print(f"thumbs: {report['counts']['events']} votes, {report['counts']['desirable_fraction']:.0%} up; "
          f"heavy downvoters: {', '.join(heavy) or 'none'}")  # fmt: skip
    _say(number, f"train ({cfg.method})")
    rcfg = round_config(cfg, settings, folder, number, start, original, previous_adapter)
    run_dir = _train(rcfg, number)
    final = run_dir / "final"
    model = final / "merged" if (final / "merged").exists() else final
    _say(number, "evaluate against the round's start and the original model")
    evals = _evaluate(settings, folder, run_dir, number, answers, start, original, progress)
    summary_path = run_dir / "data_summary.json"
    data_summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return {
        "round": number,
        "start": start,
        "model": str(model),
        "adapter": str(final) if (final / "adapter_config.json").exists() else None,
        "trained_reference": original if settings.reference == "original" else start,
        "answers": len(answers),
        "feedback": info,
        "ingest": {k: manifest.get(k) for k in ("rows_in", "rows_ok", "rows_duplicate", "rows_quarantined")},
        "audit": {
            "votes": report["counts"]["events"],
            "desirable_fraction": report["counts"]["desirable_fraction"],
            "users": report["counts"]["users"],
            "heavy_downvoters": heavy,
            "flip_rate": report["noise"].get("flip_rate"),
            "flip_rate_ci95": report["noise"].get("ci95"),
        },
        "train": {k: data_summary.get(k) for k in ("examples", "desirable", "undesirable", "class_weights")},
        "eval_prompts": evals["prompts"],
        "against_start": headline(evals["against_start"]),
        "against_original": headline(evals["against_original"]),
        "seconds": round(time.perf_counter() - started, 1),
    }
