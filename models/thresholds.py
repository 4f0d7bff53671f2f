"""Where to cut a score so that good parts are rejected at most at a given rate; one definition for
calibration (train.py) and evaluation (evaluate.py). Pure NumPy.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

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


HOLD_CONFIDENCE = 0.99
"""A calibration "holds" its target when the realized false-reject rate on new good parts lies
within HOLD_BAND times the target with at least this probability. At 0.9 (about 1000 good images
for 1 %), one model in ten that said "holds" missed the band, and the calibration check saw it
(seed 1 of five, 0.45 % for 1 %); a plant signs off a promise it can count on every time."""
HOLD_BAND = (0.5, 1.5)


@dataclass(frozen=True)
class Calibrated:
    """A cut set on n exchangeable good scores for a target false-reject rate, and what it promises.
    Cutting at the k-th highest of n good scores, the share of new good parts at or above it (the
    realized false-reject rate) is Beta(k, n + 1 - k) distributed: mean k / (n + 1) <= target."""

    cut: float
    target: float
    n: int
    k: int
    """How many of the n good scores the cut rejects (ties included)."""
    interval: tuple[float, float]
    """5 % and 95 % quantiles of the realized false-reject rate."""
    p_within: float
    """Probability that the realized rate lies within HOLD_BAND times the target."""

    @property
    def holds(self) -> bool:
        return self.k >= 1 and self.p_within >= HOLD_CONFIDENCE

    def summary(self) -> dict[str, object]:
        return {"cut": self.cut, "target_frr": self.target, "n_good": self.n, "rejected_of_n": self.k,
                "realized_frr_90": list(self.interval), "p_within_band": self.p_within, "band": list(HOLD_BAND),
                "holds": self.holds, "good_images_needed": good_images_needed(self.target)}  # fmt: skip


def realized_rate(n: int, k: int, target: float) -> tuple[tuple[float, float], float]:
    """(5 %..95 % interval, probability within HOLD_BAND x target) of the realized false-reject rate
    of a cut that rejects the k highest of n exchangeable good scores."""
    from scipy.stats import beta

    # Above every score seen (k = 0), a new good part still passes the cut with chance Beta(1, n).
    dist = beta(max(k, 1), n + 1 - max(k, 1))
    lo, hi = (float(q) for q in dist.ppf([0.05, 0.95]))
    return (lo, hi), 0.0 if k < 1 else float(dist.cdf(HOLD_BAND[1] * target) - dist.cdf(HOLD_BAND[0] * target))


def calibrated_cut(good: np.ndarray, target: float) -> Calibrated:
    """The cut for `target` (see limit_for_rate) with the confidence it deserves. One mislabelled
    good image among n moves it by one order statistic; with few images (k = 0) it sets it."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target false-reject rate {target} is not in (0, 1)")
    cut, _ = limit_for_rate(good, target)
    k = int((good >= cut).sum())
    # Not exactly on a score: the model computes it in float32, and a cut on it would flip with the
    # last bit. A twentieth of the way down to the highest score kept (still rejecting the k, and
    # keeping the Beta(k, n + 1 - k) promise all but exactly), or a little above them all.
    kept = good[good < cut]
    if len(kept):
        top = float(kept.max())
        cut = cut - (cut - top) / 20 if k else top + 1e-3 * max(1.0, abs(top))
    interval, p_within = realized_rate(len(good), k, target)
    return Calibrated(cut, target, len(good), k, interval, p_within)


@functools.cache
def good_images_needed(target: float) -> int:
    """The fewest good calibration images from which on every larger set holds `target` too (see
    Calibrated.holds). Not the first n that holds: k = floor((n + 1) * target) steps up at the start
    of each block of about 1 / target images, and the confidence dips there (at 1 %: 2492 holds,
    2500 does not), so the number to tell a user is where the dips stay above HOLD_CONFIDENCE."""

    def holds(n: int) -> bool:
        k = math.floor((n + 1) * target + 1e-9)
        return k >= 1 and realized_rate(n, k, target)[1] >= HOLD_CONFIDENCE

    def block(k: int) -> tuple[int, int]:  # the n for which the cut rejects exactly k
        return max(1, math.ceil(k / target - 1e-9) - 1), math.ceil((k + 1) / target - 1e-9) - 2

    # Within a block the confidence is lowest at one of its ends; past the last block with a low end,
    # every n holds (the rate's spread only narrows). Scan blocks, then the last failing one's end.
    last_failing, k = 0, 1
    while k <= last_failing + 50:  # the dips only shrink as k grows: 50 blocks without one settle it
        start, end = block(k)
        if start <= end and not (holds(start) and holds(end)):
            last_failing = k
        k += 1
    if last_failing == 0:
        return block(1)[0]
    start, n = block(last_failing)
    while n >= start and holds(n):
        n -= 1
    return n + 1
