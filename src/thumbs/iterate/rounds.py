"""`thumbs iterate`: rounds of answer → feedback → ingest → audit → train → evaluate.

Round N starts from a policy (round 1: the original model; round N+1: round N's final model):

1. the policy answers the prompts, ``samples_per_prompt`` samples each (``answers.jsonl``);
2. feedback on those answers becomes a feedback log (``feedback.jsonl``, or the votes a deployment
   gave, see thumbs.iterate.feedback);
3. the real ``ingest`` reads it into ``data/`` (a share of the prompts held out as its eval split)
   and ``audit`` writes ``audit.json``;
4. the policy trains on the round's feedback only (``run/``, the config's method, KTO by default);
5. the round's model is evaluated against the round's start and against the original model, with
   the same prompts and sample streams (``eval.json``); ``round.json`` marks the round finished.

Reference per round (``iterate.reference``): ``start`` (default): KTO's reference is the round's
starting policy; a LoRA adapter is merged into the weights at the end of each round
(``run/final/merged``) and that merged model is the next round's start, trained with a fresh
adapter. ``original``: the reference stays the original model in every round; one LoRA adapter
is carried from round to round over the original weights (``model.adapter``), its merge written
only to evaluate against the round's start. Full fine-tuning supports ``start`` only.

Resuming: every step's output is written whole, and a step whose output exists is reused, so a
rerun with the same settings skips finished rounds and continues an interrupted one where it
stopped (training from its last checkpoint). ``iterate.json`` holds the settings and the
trajectory so far; a rerun with other settings into the same folder is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from thumbs.config import Config
from thumbs.errors import ThumbsError
from thumbs.folders import make_dir, owned, staging, swap_in, write_text
from thumbs.iterate.settings import IterateSettings

SAME_SETTINGS_EXCEPT = ("rounds",)
PAIRWISE = ("llm:", "openai:")  # judges that compare two completions instead of scoring one


def _dump(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n"


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _fixed(cfg: Config, settings: IterateSettings) -> dict:
    """What a folder's rounds were made with; a resume must bring the same."""
    chosen = settings.model_dump(mode="json")
    for key in SAME_SETTINGS_EXCEPT:
        chosen.pop(key)
    config = cfg.model_dump(mode="json")
    config.pop("output_dir")
    return {"settings": chosen, "config": config}


def _check_resume(out: Path, fixed: dict) -> None:
    path = out / "iterate.json"
    if not path.exists():
        if any(out.glob("round-*/round.json")):
            raise ThumbsError("the folder holds finished rounds but no iterate.json", file=str(out),
                              hint="write to another folder (-o) or remove this one")  # fmt: skip
        return
    before = _read(path)
    for part in ("settings", "config"):
        old, new = before.get(part, {}), fixed[part]
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            raise ThumbsError(
                f"the folder's rounds were made with other {part}: {', '.join(changed)} differ",
                file=str(path),
                hint="rerun with the same config and options to resume, or write to another folder (-o)",
            )


def _original(cfg: Config, out: Path) -> str:
    """The original model as a path: ``tiny`` is built once into DIR/original, ``default`` cached."""
    from thumbs.models import resolve_model, save_tiny

    if cfg.model.name_or_path != "tiny":
        return resolve_model(cfg.model.name_or_path)
    target = out / "original"
    if not (target / "config.json").exists():
        tmp = staging(target)
        save_tiny(tmp, seed=cfg.train.seed, **cfg.model.tiny)
        swap_in(tmp, target)
    return str(target.resolve())


def iterate(
    cfg: Config,
    settings: IterateSettings,
    out: str | Path,
    *,
    feedback_file: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Run (or resume) ``settings.rounds`` rounds into ``out``; return iterate.json's dict."""
    import torch

    from thumbs.eval.heldout import read_prompts

    if settings.prompts is None:
        raise ThumbsError("no prompts to answer", hint="pass --prompts FILE (one prompt per line, or JSONL)")
    if feedback_file is not None and settings.feedback != "log":
        raise ThumbsError("--feedback-file is for --feedback log", hint="drop it, or pass --feedback log")
    if settings.reference == "original" and not cfg.model.lora.enabled:
        raise ThumbsError(
            "iterate.reference 'original' needs LoRA (model.lora.enabled): the adapter is carried over "
            "the original weights, which stay the reference",
            hint="use reference: start for full fine-tuning",
        )
    if settings.feedback != "log" and settings.judge.startswith(PAIRWISE):
        raise ThumbsError(
            f"judge '{settings.judge}' compares two answers; feedback needs a judge that scores one",
            hint="give iterate.judge as vader, hf:PATH or python:MODULE:FUNCTION (a pairwise judge can "
            "still evaluate: --eval-judge)",
        )
    prompts = read_prompts(Path(settings.prompts))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    out = Path(out)
    with owned(out, "thumbs iterate"):
        make_dir(out)
        fixed = _fixed(cfg, settings)
        _check_resume(out, fixed)
        original = _original(cfg, out)
        state = {
            **fixed,
            "rounds_requested": settings.rounds,
            "original": original,
            "reference": settings.reference,
            "reference_note": reference_note(cfg, settings),
            "rounds": [],
            "status": "running",
        }
        write_text(out / "iterate.json", _dump(state))
        start, adapter, used_file = original, None, False
        for number in range(1, settings.rounds + 1):
            folder = make_dir(out / f"round-{number}")
            done = folder / "round.json"
            if done.exists():
                summary = _read(done)
                print(f"thumbs: round {number} finished before; reusing {folder}")
            else:
                from thumbs.iterate.round import run_round

                waiting = settings.feedback == "log" and not (folder / "feedback-source.json").exists()
                given = feedback_file if waiting and not used_file else None
                used_file = used_file or given is not None
                summary = run_round(
                    cfg, settings, folder, number, prompts, start=start, original=original,
                    previous_adapter=adapter, feedback_file=given, device=device, progress=progress,
                )  # fmt: skip
                if summary is None:
                    state["status"] = f"waiting for feedback on round {number}"
                    state["waiting"] = {"round": number, "answers": str(folder / "answers.jsonl")}
                    write_text(out / "iterate.json", _dump(state))
                    _say_waiting(folder, number)
                    return state
                write_text(done, _dump(summary))
                summary = _read(done)  # as a resume will read it
            state["rounds"].append(summary)
            write_text(out / "iterate.json", _dump(state))
            start, adapter = summary["model"], summary["adapter"]
        if feedback_file is not None and not used_file:
            raise ThumbsError(
                "no round was waiting for feedback, so --feedback-file was not used",
                file=str(feedback_file),
                hint=f"the {settings.rounds} round(s) asked for are finished; pass more --rounds to go on",
            )
        state["status"] = "finished"
        write_text(out / "iterate.json", _dump(state))
        from thumbs.iterate.page import write_page

        state["report"] = str(write_page(state, out / "iterate.html"))
        write_text(out / "iterate.json", _dump(state))
    return state


def reference_note(cfg: Config, settings: IterateSettings) -> str:
    """The sentence iterate.json and the page state about each round's reference and the weights."""
    if settings.reference == "original":
        return (
            "the training reference (π_ref) in every round is the original model; one LoRA adapter is "
            "carried on from round to round over the original weights (each round's merge only evaluates it)"
        )
    carried = (
        "LoRA adapters are merged into the weights between rounds (round N's run/final/merged is round "
        "N+1's start, trained with a fresh adapter)"
        if cfg.model.lora.enabled
        else "full fine-tuning: round N's run/final is round N+1's start"
    )
    return f"the training reference (π_ref) in each round is the round's starting policy; {carried}"


def _say_waiting(folder: Path, number: int) -> None:
    print(
        f"\nthumbs: round {number} stops for votes: its answers are in {folder / 'answers.jsonl'}.\n"
        "  Collect thumbs on them (prompt, completion, label, user_id; any file `thumbs ingest` reads),\n"
        "  then run the same command again with --feedback-file FILE to continue."
    )
