"""Report: runs side by side, as one self-contained HTML page and a terminal table."""

from thumbs.report.compare import compare

__all__ = ["compare"]
