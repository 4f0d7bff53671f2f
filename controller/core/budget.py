"""The verdict path's time budget, learnt from how this line really behaves: how long a verdict
waits after inference for the write that carries it, how long an S7 write takes, and from those
the deadline margin, the admission budget and how long one inference may be waited for.

Pure: it is told durations, it never reads a clock. Not here: positions and deadlines themselves
(controller/core/tracking.py), when to write (controller/app.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

MAX_WAIT_S = 5.0
"""Upper bound on one inference wait while the conveyor stands (the deadline is positional)."""


class VerdictBudget:
    def __init__(self, base_write_s: float, keep: int = 200) -> None:
        self.base_write_s = base_write_s
        """The configured write margin: the learnt one never goes below it."""
        self._write_times: deque[float] = deque(maxlen=keep)
        self._queue_times: deque[float] = deque(maxlen=keep)

    def learn_write(self, seconds: float) -> None:
        """One S7 write request's round trip."""
        self._write_times.append(seconds)

    def learn_queue(self, seconds: float) -> None:
        """One verdict's wait from inference done to the start of the write that carried it."""
        self._queue_times.append(seconds)

    @property
    def write_s(self) -> float:
        """The deadline margin for the write: one S7 write request as this line really does it,
        never below the configured margin, raised to the 99th percentile of the last round trips.
        The entry lands when the request arrives, about half the round trip, so this has room
        already; a verdict whose write takes longer than its margin is late at the PLC: rejected,
        never a wrong pass."""
        return max(self.base_write_s, percentile(self._write_times, 0.99))

    @property
    def queue_s(self) -> float:
        """How long a verdict typically waits after inference for the write that carries it
        (journal fsync, then the write): the median of the last ones. Not a high percentile: a
        part refused for lack of time is a certain fail-safe reject, one admitted that then waits
        out a rare slow fsync is at worst the same reject, so admission bets on the typical wait.
        (With the 95th, a few fsyncs of 300 ms on a virtual disk refused 63 of 100 parts.)"""
        return percentile(self._queue_times, 0.5)

    def lands_after(self, in_second_request: bool) -> float:
        """An entry beyond the first write request's reach lands one request later: a typical
        request (the margin itself already covers a slow one)."""
        return percentile(self._write_times, 0.5) if in_second_request else 0.0

    def admission_s(self, expected_inference_s: float) -> float:
        """What a part needs before its deadline to be worth inferring."""
        return expected_inference_s + self.queue_s

    def inference_wait(self, time_left_s: float) -> float:
        """How long to wait for the inference: until the verdict could still be queued in time."""
        return min(max(0.0, time_left_s - self.queue_s), MAX_WAIT_S)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, int(q * len(ranked)))]
