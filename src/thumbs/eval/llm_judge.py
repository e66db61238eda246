"""LLM judges, asked pairwise (see thumbs.eval.pairwise): a local chat model or a chat server.

``llm:PATH_OR_ID``     a Hugging Face chat model (it needs a chat template), run here with
                       transformers, greedy, in batches.
``openai:URL[#MODEL]`` any OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp's
                       server, ``transformers serve``): URL is its base (``http://host:8000/v1``);
                       without ``#MODEL`` the server's only model is used. Greedy (temperature 0),
                       bounded: a timeout on every request, a few retries with backoff on
                       connection errors and 429/5xx, then a ThumbsError. An API key is sent when
                       ``THUMBS_JUDGE_API_KEY`` (or ``OPENAI_API_KEY``) is set.

The HTTP client is ``requests`` (with urllib3's ``Retry``): already a dependency of the stack
(vaderSentiment needs it), and one JSON POST is all the chat-completions protocol needs here.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from thumbs.errors import ThumbsError
from thumbs.eval.pairwise import PairwiseJudge, load_rubric

MAX_TOKENS = 32  # enough for "A", "tie" or a short "Verdict: B" line
TIMEOUT_S = 60.0  # per request, reading the reply
CONNECT_TIMEOUT_S = 5.0
RETRIES = 3
WORKERS = 4  # requests in flight at once; servers batch them
SERVER_HINT = "start the server, or check the URL: openai:http://HOST:PORT/v1[#MODEL]"


class LocalChat:
    """A Hugging Face chat model answering conversations greedily, a batch at a time."""

    def __init__(self, path: str, device: str = "cpu", max_new_tokens: int = MAX_TOKENS, batch_size: int = 8):
        import torch

        from thumbs.models import load_model, load_tokenizer

        self.tokenizer = load_tokenizer(path)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ThumbsError(
                f"judge llm:{path}: the tokenizer has no chat template",
                hint="use an instruct/chat model as the judge",
            )
        self.tokenizer.padding_side = "left"  # generation continues every row from its end
        dtype = torch.bfloat16 if str(device).startswith("cuda") else None
        self.model = load_model(path, dtype=dtype).to(device).eval()
        self.device, self.max_new_tokens, self.batch_size = device, max_new_tokens, batch_size
        self.key = f"llm:{path}|greedy|max_new_tokens={max_new_tokens}"

    def __call__(self, conversations: list[list[dict]]) -> list[str]:
        import torch

        replies: list[str] = []
        for start in range(0, len(conversations), self.batch_size):
            texts = [
                self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                for c in conversations[start : start + self.batch_size]
            ]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(self.device)
            with torch.inference_mode():
                out = self.model.generate(
                    **batch,
                    do_sample=False,
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = out[:, batch["input_ids"].shape[1] :]
            replies.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return replies


class OpenAIChat:
    """An OpenAI-compatible chat-completions endpoint, asked greedily with bounded retries."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        max_tokens: int = MAX_TOKENS,
        timeout: float = TIMEOUT_S,
        retries: int = RETRIES,
        workers: int = WORKERS,
    ) -> None:
        base = url.rstrip("/")
        base = base[: -len("/chat/completions")] if base.endswith("/chat/completions") else base
        if not base.startswith(("http://", "https://")):
            raise ThumbsError(f"judge openai:{url}: not an http(s) URL", hint=SERVER_HINT)
        self.base, self.max_tokens, self.timeout, self.retries = base, max_tokens, timeout, retries
        self.workers = max(1, workers)
        self._local = threading.local()
        self.model = model or self._only_model()
        self.key = f"openai:{self.model}|temperature=0|max_tokens={max_tokens}"

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            import requests
            from requests.adapters import HTTPAdapter
            from urllib3.util.retry import Retry

            retry = Retry(
                total=self.retries,
                backoff_factor=0.5,
                status_forcelist=(429, 500, 502, 503, 504),
                allowed_methods=None,  # POST too: a chat completion has no side effects
                raise_on_status=False,
            )
            session = requests.Session()
            session.mount("http://", HTTPAdapter(max_retries=retry))
            session.mount("https://", HTTPAdapter(max_retries=retry))
            key = os.environ.get("THUMBS_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
            if key:
                session.headers["Authorization"] = f"Bearer {key}"
            self._local.session = session
        return session

    def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        import requests

        url = self.base + path
        try:
            response = self._session().request(
                method, url, json=body, timeout=(CONNECT_TIMEOUT_S, self.timeout)
            )
        except requests.RequestException as err:
            raise ThumbsError(
                f"judge server {self.base} did not answer ({self.retries + 1} tries, "
                f"{self.timeout:g} s timeout each): {type(err).__name__}",
                hint=SERVER_HINT,
            ) from None
        if response.status_code != 200:
            raise ThumbsError(
                f"judge server {url} answered HTTP {response.status_code}: {response.text[:300]}",
                hint="check the model name (#MODEL) and that the server serves chat completions",
            )
        try:
            return response.json()
        except ValueError:
            raise ThumbsError(f"judge server {url} answered with something that is not JSON") from None

    def _only_model(self) -> str:
        data = self._request("GET", "/models")
        ids = [m.get("id") for m in (data.get("data") or []) if isinstance(m, dict) and m.get("id")]
        if len(ids) != 1:
            raise ThumbsError(
                f"judge server {self.base} serves {len(ids)} models ({', '.join(map(str, ids[:5]))})",
                hint="name one: openai:URL#MODEL",
            )
        return str(ids[0])

    def _one(self, messages: list[dict]) -> str:
        body = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens, "temperature": 0}
        data = self._request("POST", "/chat/completions", body)
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ThumbsError(
                f"judge server {self.base}: a chat completion without choices[0].message: {str(data)[:200]}"
            ) from None
        return content if isinstance(content, str) else ""

    def __call__(self, conversations: list[list[dict]]) -> list[str]:
        if not conversations:
            return []
        first = self._one(conversations[0])  # a server that is down fails here, once
        pool = ThreadPoolExecutor(max_workers=self.workers)
        try:
            rest = list(pool.map(self._one, conversations[1:]))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return [first, *rest]


def llm_judge(
    spec: str, *, device: str = "cpu", rubric: str | Path | None = None, **options
) -> PairwiseJudge:
    """A pairwise judge from ``llm:PATH_OR_ID`` or ``openai:URL[#MODEL]``; ``options`` go to the backend."""
    kind, _, target = spec.partition(":")
    if not target:
        raise ThumbsError(f"judge '{spec}' names no model", hint="llm:PATH_OR_ID or openai:URL[#MODEL]")
    load_rubric(rubric)  # a bad rubric fails before a model loads or a server is asked
    if kind == "llm":
        backend, name = LocalChat(target, device=device, **options), spec
    else:
        url, _, model = target.partition("#")
        backend = OpenAIChat(url, model or None, **options)
        name = f"openai:{backend.base}#{backend.model}"
    return PairwiseJudge(name, backend, key=backend.key, rubric=rubric)
