"""Feedback on a round's answers, written as a feedback log like a user's own (``feedback.jsonl``:
prompt, completion, label, user_id), which the round then ingests and audits.

``judge``       a thumbs judge scores every answer; up when its score is above the round's
                threshold (a fixed number, the median or a quantile of this round's scores), one
                vote per answer from user ``judge``.
``population``  the simulated users of the production scenario (thumbs.iterate.population) vote,
                the ordinary ones by the judge's score with noise, the planted heavy downvoters
                mostly down whatever the answer says.
``log``         votes from a real deployment: the round stops after its answers are written, and
                the next invocation brings the votes with ``--feedback-file FILE`` (any file
                `thumbs ingest` reads), copied into the round's folder as it was given.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from thumbs.errors import ThumbsError
from thumbs.folders import write_text
from thumbs.iterate.settings import IterateSettings


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def feedback_path(folder: Path) -> Path | None:
    """The round's feedback log, if it has one yet (``feedback.jsonl`` or a copied ``feedback.*``)."""
    found = sorted(p for p in folder.glob("feedback.*") if p.is_file())
    return found[0] if found else None


def population_of(settings: IterateSettings):
    from thumbs.iterate.population import Population

    try:
        return Population(**settings.population)
    except TypeError as err:
        raise ThumbsError(
            f"iterate.population: {err}",
            hint="its keys are the fields of thumbs.iterate.population.Population",
        ) from None


def _scores(settings: IterateSettings, answers: list[dict], device: str) -> list[float]:
    from thumbs.eval.heldout import prompt_text
    from thumbs.eval.judges import checked_scores, make_judge

    judge = make_judge(settings.judge, device=device)
    prompts = [prompt_text(a["prompt"], messages=True) for a in answers]
    # a NaN is above no threshold: unchecked, it would become a silent thumbs-down
    return checked_scores(judge, prompts, [a["completion"] for a in answers], "round's answer")


def collect(
    settings: IterateSettings,
    answers: list[dict],
    folder: Path,
    round_number: int,
    *,
    feedback_file: str | Path | None = None,
    device: str = "cpu",
) -> dict | None:
    """Write the round's feedback log into ``folder``; its summary, or None while a log round waits."""
    if settings.feedback == "log":
        if feedback_file is None:
            return None
        given = Path(feedback_file)
        if not given.is_file():
            raise ThumbsError(
                "feedback file not found",
                file=str(given),
                hint="give the file of votes on this round's answers",
            )
        suffix = "".join(given.suffixes[-2:]) if given.suffix == ".gz" else given.suffix
        target = folder / f"feedback{suffix or '.jsonl'}"
        tmp = folder / f".{target.name}.tmp"
        shutil.copyfile(given, tmp)
        tmp.replace(target)
        return {"source": "log", "file": str(given.resolve())}
    rows = [{"prompt": a["prompt"], "completion": a["completion"]} for a in answers]
    scores = _scores(settings, answers, device)
    info = {"source": settings.feedback, "judge": settings.judge, **_score_summary(scores)}
    if settings.feedback == "judge":
        cut = settings.threshold_value(scores)
        votes = [{**row, "label": bool(s > cut), "user_id": "judge"} for row, s in zip(rows, scores)]
        info |= {"threshold": settings.threshold, "cut": cut}
    else:
        from dataclasses import asdict

        from thumbs.iterate.population import planted, simulate_votes

        population = population_of(settings)
        votes = simulate_votes(rows, scores, population, seed=settings.seed * 1000 + round_number)
        info |= {"population": asdict(population), "planted_heavy_downvoters": planted(population)}
    write_text(folder / "feedback.jsonl", jsonl(votes))
    return info


def _score_summary(scores: list[float]) -> dict:
    """The judge's mean score of the round's answers: how the round's starting policy answers."""
    values = np.asarray(scores, dtype=float)
    stderr = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
    return {"answer_score": {"mean": float(values.mean()) if len(values) else None, "stderr": stderr}}
