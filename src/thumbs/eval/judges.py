"""Judges: score a completion for its prompt, higher is better.

``vader``                 VADER's lexicon (Hutto & Gilbert 2014): the compound sentiment in [-1, 1].
``hf:PATH``               any Hugging Face sequence classifier on the completion text: the probability
                          of its positive class (a label named positive / LABEL_1, else the last
                          class; a one-logit head is read through a sigmoid).
``python:MODULE:FUNC``    a callable ``FUNC(prompt, completion) -> float``; MODULE is an importable
                          name or a path to a ``.py`` file. The prompt comes as given: text, or a
                          list of ``{role, content}`` messages for a chat prompt.
``llm:PATH_OR_ID``        a chat model run here, and ``openai:URL[#MODEL]`` any OpenAI-compatible
                          chat server: pairwise judges, each sample asked in both orders under a
                          rubric (``rubric``, a file) — see thumbs.eval.pairwise and llm_judge.

A judge that did not make the training labels is the honest choice: the demo trains on human
ratings and judges generations with the lexicon.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from thumbs.errors import ThumbsError

JUDGE_HELP = (
    "use vader, hf:PATH (a sequence classifier), python:MODULE:FUNCTION, llm:PATH_OR_ID (a chat model) "
    "or openai:URL[#MODEL] (an OpenAI-compatible chat server)"
)
_POSITIVE_LABELS = ("positive", "pos", "label_1")


class Judge:
    """Scores (prompt, completion) pairs in batches; ``name`` is what eval.json records."""

    name = "judge"

    def score(self, prompts: Sequence[Any], completions: Sequence[str]) -> list[float]:
        raise NotImplementedError


class VaderJudge(Judge):
    name = "vader"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def score(self, prompts, completions):
        return [float(self.analyzer.polarity_scores(text)["compound"]) for text in completions]


class CallableJudge(Judge):
    def __init__(self, fn: Callable[[Any, str], float], name: str) -> None:
        self.fn, self.name = fn, name

    def score(self, prompts, completions):
        scores = []
        for index, (prompt, completion) in enumerate(zip(prompts, completions)):
            value = self.fn(prompt, completion)
            try:
                if isinstance(value, (str, bytes)):
                    raise TypeError  # "0.5" is text: the judge is confused, not scoring
                scores.append(float(value))
            except (TypeError, ValueError):
                raise ThumbsError(
                    f"judge {self.name} returned {value!r} for sample {index}, not a number",
                    hint="a python: judge must return a float for (prompt, completion)",
                ) from None
        return scores


def checked_scores(
    judge: Judge, prompts: Sequence[Any], completions: Sequence[str], side: str
) -> list[float]:
    """``judge.score``, refused unless it is one finite number per completion.

    A NaN never wins or loses a comparison, so it would pass as a silent loss in the win rate.
    ``side`` names whose completions these are (policy, reference) in the error.
    """
    scores = list(judge.score(prompts, completions))
    if len(scores) != len(completions):
        raise ThumbsError(
            f"judge {judge.name} gave {len(scores)} scores for {len(completions)} {side} completions"
        )
    for index, score in enumerate(scores):
        if not math.isfinite(score):
            text = completions[index] if len(completions[index]) <= 60 else completions[index][:59] + "…"
            raise ThumbsError(
                f"judge {judge.name} gave {score!r} for the {side}'s sample {index} (completion {text!r}), "
                "not a finite number; no result was written",
                hint="a judge must return a finite number for every (prompt, completion); fix the judge",
            )
    return scores


def positive_index(id2label: dict, num_labels: int) -> int:
    """The class read as 'positive': a label named so, else the last class."""
    for index, label in sorted(id2label.items()):
        if str(label).lower() in _POSITIVE_LABELS:
            return int(index)
    return num_labels - 1


class ClassifierJudge(Judge):
    """A Hugging Face sequence classifier; the score is its positive-class probability."""

    def __init__(self, path: str, batch_size: int = 16, max_length: int = 512, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        except (OSError, ValueError) as err:
            raise ThumbsError(
                f"cannot load a sequence classifier from '{path}': {err}", hint=JUDGE_HELP
            ) from None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Decoder classifiers read the last non-pad token, so they must know the pad id.
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval()
        self.name, self.batch_size, self.max_length, self.device = (
            f"hf:{path}",
            batch_size,
            max_length,
            device,
        )
        config = self.model.config
        self.positive = positive_index(config.id2label or {}, config.num_labels)

    def score(self, prompts, completions):
        import torch

        scores: list[float] = []
        for start in range(0, len(completions), self.batch_size):
            texts = [text or " " for text in completions[start : start + self.batch_size]]
            batch = self.tokenizer(
                texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
            ).to(self.device)
            with torch.inference_mode():
                logits = self.model(**batch).logits.float()
            if logits.shape[-1] == 1:
                probs = torch.sigmoid(logits[:, 0])
            else:
                probs = torch.softmax(logits, dim=-1)[:, self.positive]
            scores.extend(probs.tolist())
        return scores


def _import_callable(spec: str) -> Callable:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ThumbsError(f"judge 'python:{spec}' is not python:MODULE:FUNCTION", hint=JUDGE_HELP)
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.exists():
                raise ThumbsError("judge file not found", file=str(path), hint=JUDGE_HELP)
            module_spec = importlib.util.spec_from_file_location(f"thumbs_judge_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ImportError as err:
        raise ThumbsError(f"cannot import judge module '{target}': {err}", hint="check PYTHONPATH") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ThumbsError(f"module '{target}' has no function '{attr}'", hint=JUDGE_HELP)
    return fn


def make_judge(spec: str | Judge | Callable, device: str = "cpu", rubric: str | Path | None = None) -> Judge:
    """A judge from its spec string (see the module docstring), a Judge, or a plain callable.

    ``rubric``: a file replacing the pairwise judges' default rubric (see thumbs.eval.pairwise).
    """
    if isinstance(spec, Judge) or getattr(spec, "pairwise", False):
        return spec
    if rubric is not None and not (isinstance(spec, str) and spec.startswith(("llm:", "openai:"))):
        raise ThumbsError("--rubric is for the pairwise judges", hint="use it with llm:… or openai:…")
    if callable(spec):
        return CallableJudge(spec, getattr(spec, "__name__", "callable"))
    if spec == "vader":
        return VaderJudge()
    if spec.startswith("hf:"):
        return ClassifierJudge(spec[3:], device=device)
    if spec.startswith("python:"):
        return CallableJudge(_import_callable(spec[len("python:") :]), spec)
    if spec.startswith(("llm:", "openai:")):
        from thumbs.eval.llm_judge import llm_judge

        return llm_judge(spec, device=device, rubric=rubric)
    raise ThumbsError(f"unknown judge '{spec}'", hint=JUDGE_HELP)
