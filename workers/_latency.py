"""A rolling window of service-time samples and the pessimistic estimate the pools report.

Responsible for: the arithmetic behind `expected_latency_s` only; the pools decide what a sample is.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np


class LatencyWindow:
    """The last `size` samples (seconds); `p95()` is what one more uncontended request is expected
    to take, pessimistically."""

    def __init__(self, size: int = 256) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        if math.isfinite(seconds) and seconds >= 0.0:
            self._samples.append(seconds)

    def __len__(self) -> int:
        return len(self._samples)

    def p95(self) -> float:
        """95th percentile of the window; +inf when there is no sample yet (nothing is known)."""
        if not self._samples:
            return math.inf
        return float(np.percentile(np.fromiter(self._samples, dtype=np.float64), 95))

    def expected(self, queued_ahead: int) -> float:
        """p95 × (1 + requests ahead of a new one): assumes each one ahead takes as long as a slow one."""
        return self.p95() * (1 + max(0, queued_ahead))
