"""Training: one loop for every method (``loop``), the methods and their losses, log-probs, the
reference pass, checkpoints and the distributed launcher."""

from thumbs.train.loop import train

__all__ = ["train"]
