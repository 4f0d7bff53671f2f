"""Where to cut a score so that good parts are rejected at most at a given rate; one definition for
calibration (train.py) and evaluation (evaluate.py). Pure NumPy.
"""

from __future__ import annotations

import math

import numpy as np


def lowest_cut(good: np.ndarray, max_rejected: int) -> float:
    """The lowest cut c (reject when score >= c) among the good scores that rejects at most
    `max_rejected` of them, ties counted; just above the highest good score when even that one
    would reject too many (or there are none)."""
    above_all = float(np.nextafter(good.max(), np.inf)) if len(good) else 0.0
    if max_rejected < 0:
        return above_all
    ordered = np.sort(good)
    # Rejected by cut c: the count of scores >= c; search the distinct values from the top.
    values, first = np.unique(ordered, return_index=True)
    rejected = len(ordered) - first  # for each distinct value, how many scores are >= it
    ok = np.flatnonzero(rejected <= max_rejected)
    return float(values[ok[0]]) if len(ok) else above_all


def limit_for_rate(good: np.ndarray, rate: float) -> tuple[float, bool]:
    """(cut, holds): a cut that a new good part drawn like `good` reaches with probability at most
    `rate`. Among n exchangeable scores and a new one, the new one is among the k highest with
    probability k / (n + 1), so the cut may reject the k = floor((n + 1) * rate) highest of the n
    and no more. `holds` is False when n is too small for any cut to
    promise that (n + 1 < 1 / rate): the cut then sits just above every good score seen."""
    allowed = math.floor((len(good) + 1) * rate + 1e-9)
    return lowest_cut(good, allowed), allowed >= 1


def cut_for_frr(good: np.ndarray, frr: float) -> float:
    """The lowest cut that rejects at most a fraction `frr` of these good scores (empirical)."""
    return lowest_cut(good, math.floor(len(good) * frr + 1e-9))
