"""Z-score outlier removal on simple document statistics.

The statistics (log characters, log words, mean word length, lines per word) are computed in the
workers; the driver standardises them over all documents still in the pipeline and drops those
more than ``maxZScore`` standard deviations from the mean on any of them.
"""

from __future__ import annotations

import math

import numpy as np

STAT_NAMES = ("log_characters", "log_words", "mean_word_length", "lines_per_word")


def document_stats(text: str) -> list[float]:
    words = text.split()
    n = max(len(words), 1)
    return [math.log1p(len(text)), math.log1p(len(words)),
            sum(map(len, words)) / n, (text.count("\n") + 1) / n]


def outlier_reasons(stats: np.ndarray, max_z: float) -> list[str | None]:
    """Per row of ``stats`` [documents, len(STAT_NAMES)]: the first statistic beyond ``max_z``."""
    if len(stats) < 3:
        return [None] * len(stats)
    mean, std = stats.mean(axis=0), stats.std(axis=0)
    std[std == 0] = 1.0
    z = np.abs((stats - mean) / std)
    beyond = z > max_z
    out: list[str | None] = []
    for row in beyond:
        hit = np.flatnonzero(row)
        out.append(f"z_{STAT_NAMES[hit[0]]}" if len(hit) else None)
    return out
