"""Small builders shared by the tests: toy feedback data and configs for tiny models."""

from __future__ import annotations

import json
import random
from pathlib import Path

from thumbs.config import load_config

GOOD = ["great", "lovely", "superb", "wonderful", "excellent", "delightful", "brilliant", "charming"]
BAD = ["awful", "boring", "dreadful", "terrible", "dull", "horrible", "clumsy", "tedious"]
TOPICS = ["film", "meal", "hotel", "song", "book", "phone", "game", "park", "show", "car"]


def toy_feedback(n: int, seed: int = 0, p_up: float = 0.5) -> list[dict]:
    """Reviews whose thumbs depend only on the adjectives used: a task a tiny model can learn."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        up = rng.random() < p_up
        words = rng.sample(GOOD if up else BAD, 2)
        topic = rng.choice(TOPICS)
        prompt = [{"role": "user", "content": f"Review the {topic}."}] if i % 2 else f"Review the {topic}:"
        rows.append({"prompt": prompt, "completion": f"The {topic} was {words[0]} and {words[1]}.", "label": up,
                     "user_id": f"u{rng.randrange(10)}"})  # fmt: skip
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tiny_config(tmp_path: Path, data: Path, **overrides):
    """A config for a tiny model; ``overrides`` are dotted keys, e.g. train__max_steps=4."""
    sets = {
        "model.name_or_path": "tiny",
        "model.tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "num_key_value_heads": 1},
        "model.lora.r": 8,
        "model.lora.alpha": 16,
        "data.train": str(data),
        "data.max_length": 96,
        "train.batch_size": 4,
        "train.max_steps": 4,
        "train.learning_rate": 1e-3,
        "train.warmup_ratio": 0.0,
        "output_dir": str(tmp_path / "run"),
    }  # fmt: skip
    sets.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in sets.items()])
