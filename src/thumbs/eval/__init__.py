"""Evaluation: sampling with shared random streams, judges, held-out feedback, the metrics."""

from thumbs.eval.evaluation import evaluate

__all__ = ["evaluate"]
