"""When did the PLC sample the snapshot we just read, in our monotonic clock?

A read tells only that the PLC sampled its encoder somewhere between sending the request and
receiving the reply. On a fast link that is sharp enough; on a slow, jittery one the midpoint is off
by half the difference of the two one-way delays (±10 ms at 20 ± 10 ms each way), enough to hand a
frame to no part. The encoder sharpens it: at a steady speed, each earlier read, moved forward by
the distance travelled since, bounds the same instant again, and the bounds intersect to about the
smallest delays seen each way, whose difference is small (NTP's minimum filter, with the conveyor
as the reference clock). The current read's own interval always bounds the result, so a speed
change can cost sharpness, never more error than the midpoint would have.

Pure: no I/O, no clock. Not here: the trigger ↔ frame association (controller/frame_matching.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from controller.tracking import wrap_diff

STEADY = 0.02
"""Earlier reads count only while the speed stays within 2 % of the current one."""


@dataclass(frozen=True, slots=True)
class _Read:
    sent: float
    received: float
    encoder_pos: int
    speed: float


class SnapshotClock:
    def __init__(self, keep: int = 8) -> None:
        self._reads: deque[_Read] = deque(maxlen=keep)

    def sampled_at(self, sent: float, received: float, encoder_pos: int, speed: float) -> float:
        """Best estimate of when the PLC sampled `encoder_pos` (read sent/received in our clock)."""
        read = _Read(sent, received, encoder_pos, speed)
        lo, hi = sent, received
        if speed >= 1.0:
            for r in self._reads:
                if abs(r.speed - speed) > STEADY * speed:
                    continue
                travelled_s = wrap_diff(encoder_pos, r.encoder_pos) / speed
                lo, hi = max(lo, r.sent + travelled_s), min(hi, r.received + travelled_s)
        else:
            self._reads.clear()  # standing still: the encoder says nothing about time
        self._reads.append(read)
        if lo > hi:  # the earlier reads disagree (the speed changed): trust this read alone
            return (sent + received) / 2
        return (lo + hi) / 2
