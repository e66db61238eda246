"""Judge models for the LLM-judge tests, and a real OpenAI-compatible server (`transformers serve`).

Two tiny chat models: a random one (its replies are garbage, so every verdict is a parse failure),
and a *first-sayer*, built so that greedy decoding answers "A" to anything and then stops: the
most position-biased judge there is, which pairwise judging in both orders must cancel.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

SERVE_START_S = 180  # importing torch + transformers on a shared 2-core machine can be slow


def save_first_sayer(path: Path) -> Path:
    """A tiny Llama whose greedy reply to any prompt is "A" then end-of-turn.

    Its one decoder layer is zeroed, so the last hidden state is the last token's embedding: every
    token embeds on axis 0 except "A" (axis 1), and the LM head reads axis 0 as "A" and axis 1 as
    the end-of-turn token.
    """
    import torch

    from thumbs.models import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, num_hidden_layers=1, tie_word_embeddings=False)
    a_id, eos_id = tokenizer.convert_tokens_to_ids("A"), tokenizer.eos_token_id
    with torch.no_grad():
        for parameter in model.model.layers.parameters():
            parameter.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed.zero_()
        embed[:, 0] = 1.0
        embed[a_id] = 0.0
        embed[a_id, 1] = 1.0
        head.zero_()
        head[a_id, 0] = 10.0
        head[eos_id, 1] = 10.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_command() -> list[str]:
    found = shutil.which("transformers", path=os.path.dirname(sys.executable))
    if found is None:
        pytest.skip("the transformers CLI is not installed")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        pytest.skip("transformers serve needs the serving extra: pip install 'transformers[serving]'")
    return [found, "serve"]


@contextmanager
def serve(log: Path, model: Path | None = None):
    """`transformers serve` on 127.0.0.1; yields its /v1 URL.

    Without ``model`` it loads models on demand (a request names one by its path); with one, it
    serves that model only.
    """
    import requests

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    command = [*_serve_command(), *([str(model)] if model else [])]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + SERVE_START_S
        while True:
            if server.poll() is not None:
                raise AssertionError(f"transformers serve exited: {log.read_text()[-2000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"transformers serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def responses(conversation: list[dict]) -> tuple[str, str]:
    """(response A, response B) as the default rubric shows them to the judge."""
    text = conversation[0]["content"]
    a = text.split("[Response A]\n", 1)[1].split("\n\n[Response B]", 1)[0]
    b = text.split("[Response B]\n", 1)[1].split("\n\nReply with", 1)[0]
    return a, b


class Recorder:
    """Wraps a judge backend (or a ``decide(a, b) -> reply`` function) and records each (A, B) asked."""

    def __init__(self, backend=None, decide=None):
        self.backend, self.decide, self.asked = backend, decide, []

    def __call__(self, conversations):
        pairs = [responses(c) for c in conversations]
        self.asked.extend(pairs)
        if self.backend is not None:
            return self.backend(conversations)
        return [self.decide(a, b) for a, b in pairs]
