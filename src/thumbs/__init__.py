"""thumbs: turn thumbs-up/down feedback into a better language model."""

__version__ = "0.1.0"
