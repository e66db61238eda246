"""The human ratings shipped in the VADER source distribution (Hutto & Gilbert 2014, MIT).

About 23,700 short texts (movie-review snippets, Amazon review snippets, tweets, NYT editorial
snippets), each rated from -4 to +4 by 10-20 people, with every individual rating kept. The
sdist is fetched once with pip into the thumbs cache; nothing else is downloaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from thumbs.errors import ThumbsError
from thumbs.paths import cache_dir

VADER_SDIST = "vaderSentiment==3.3.2"
CORPORA = {
    "movies": "movieReviewSnippets",
    "amazon": "amazonReviewSnippets",
    "tweets": "tweets",
    "nyt": "nytEditorialSnippets",
}


@dataclass(frozen=True)
class RatedText:
    corpus: str
    text_id: str
    text: str
    mean_rating: float
    ratings: tuple[int, ...]


def vader_data_dir() -> Path:
    """Folder with the ``*_GroundTruth.txt`` and ``*_anonDataRatings.txt`` files, fetched once."""
    root = cache_dir("vader")
    data = root / "hutto_ICWSM_2014"
    if (data / "movieReviewSnippets_anonDataRatings.txt").exists():
        return data
    sdists = sorted(root.glob("vaderSentiment-3.3.2.tar.gz"))
    if not sdists:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        cmd += ["-d", str(root), VADER_SDIST]
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = sorted(root.glob("vaderSentiment-3.3.2.tar.gz"))
        if done.returncode != 0 or not sdists:
            raise ThumbsError(
                f"could not fetch the {VADER_SDIST} source distribution with pip: {done.stderr.strip()[-400:]}",
                hint="check that pip can reach the package registry, or put vaderSentiment-3.3.2.tar.gz "
                f"into {root} by hand",
            )
    with tarfile.open(sdists[0]) as outer:
        member = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        with tarfile.open(fileobj=member) as inner:
            inner.extractall(root, filter="data")
    return data


def _read_tsv(path: Path) -> list[list[str]]:
    text = path.read_bytes().decode("utf-8", errors="replace").lstrip("\ufeff")
    return [line.split("\t") for line in text.splitlines() if line.strip()]


def load_ratings(corpus: str = "movies") -> list[RatedText]:
    """Every text of one corpus (``movies``, ``amazon``, ``tweets``, ``nyt``) with its individual ratings."""
    if corpus not in CORPORA:
        raise ThumbsError(f"unknown VADER corpus '{corpus}'", hint=f"use one of {', '.join(CORPORA)}")
    data = vader_data_dir()
    stem = CORPORA[corpus]
    texts = {row[0]: row[2] for row in _read_tsv(data / f"{stem}_GroundTruth.txt") if len(row) >= 3}
    out = []
    for row in _read_tsv(data / f"{stem}_anonDataRatings.txt"):
        if len(row) < 4 or row[0] not in texts:
            continue
        ratings = tuple(int(r) for r in ast.literal_eval(row[3].strip()))
        out.append(RatedText(corpus, row[0], texts[row[0]].strip(), float(row[1]), ratings))
    return out
