"""When did things at the PLC happen, in our monotonic clock? Always as an interval, never a point.

A read tells only that the PLC sampled its encoder before receiving the reply, and after the
previous read was sent if its `life` counter moved since that read (the block holds the last
scan's values; no assumption on the PLC's cycle time; a first read on a connection assumes one
cycle, `plc_cycle_s`). Event-loop lag
only widens that interval, it never moves it: a reply handled 75 ms late gives a 75 ms wide
interval that still contains the truth. The encoder sharpens it: at a steady speed, each earlier
read, moved forward by the distance travelled since, bounds the same instant again, and the bounds
intersect to about the smallest delays seen each way (NTP's minimum filter, with the conveyor as
the reference clock); while it speeds up or slows down, at the lowest and highest speeds seen.
The current read's own interval always bounds the result.

A trigger's instant is bounded twice: by the read that first showed it and the one before that
did not, less the PLC's trigger latency (an edge's ring entry is written at the next run of the PLC
task that latches it: hard bounds, whatever the speed did), and by the distance the conveyor moved since its
latched position, at the speeds seen between the two reads (sharp while the conveyor runs).

Pure: no I/O, no clock. Not here: the trigger ↔ frame association (controller/core/frame_matching.py).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from controller.core.tracking import MAX_ACCEL, wrap_diff

STEADY = 0.02
"""The error allowed on the PLC's filtered speed when turning a distance into a time."""



@dataclass(frozen=True, slots=True)
class Interval:
    """A closed interval of controller monotonic time (s) that contains the true instant."""

    lo: float
    hi: float

    def intersect(self, other: Interval) -> Interval | None:
        lo, hi = max(self.lo, other.lo), min(self.hi, other.hi)
        return Interval(lo, hi) if lo <= hi else None

    def shifted(self, by: float) -> Interval:
        return Interval(self.lo + by, self.hi + by)


@dataclass(frozen=True, slots=True)
class _Read:
    sent: float
    earliest: float
    """The earliest the PLC can have sampled this read's values."""
    received: float
    encoder_pos: int
    speed: float
    life: int


class SnapshotClock:
    def __init__(self, plc_cycle_s: float = 0.0, keep: int = 8, max_accel: float = MAX_ACCEL,
                 trigger_latency_s: float = 0.0, min_pitch_counts: int | None = None) -> None:  # fmt: skip
        self.plc_cycle_s = plc_cycle_s
        """The PLC's longest cycle (its cycle monitoring time): a read's values are at most this
        much older than the request, and newer than the previous request if `life` moved."""
        self.trigger_latency_s = trigger_latency_s
        """The longest from a photo-eye edge to its ring entry in the block (the period of the
        PLC task that writes it): a trigger a read does not show can be that much older."""
        self.min_pitch_counts = min_pitch_counts
        """The line's smallest trigger-to-trigger distance (None: not promised). While every
        trigger keeps it, it bounds when the next one can fire (`unseen_after`)."""
        self._newest_trigger: int | None = None
        """Latched position of this epoch's newest trigger (None: unknown, e.g. a ring overrun)."""
        self.max_accel = max_accel
        self._reads: deque[_Read] = deque(maxlen=keep)
        self._previous: _Read | None = None
        """The read before the current one on this connection (None after a reconnect)."""
        self._current: _Read | None = None
        self._sampled: Interval | None = None

    def forget(self) -> None:
        """The link was reset: the next read has no predecessor to bound its new triggers."""
        self._reads.clear()
        self._previous = self._current = None
        self._sampled = None

    def observe(self, sent: float, received: float, encoder_pos: int, speed: float, life: int) -> Interval:
        """Record one read (sent/received in our clock, the PLC's `life` in it); returns when the
        PLC sampled `encoder_pos`."""
        prev = self._current
        earliest = sent - self.plc_cycle_s
        if prev is not None and life == prev.life:
            earliest = prev.earliest  # no scan since the previous read: its values
        elif prev is not None:
            earliest = max(earliest, prev.sent)  # a scan ran after the previous read was served
        read = _Read(sent, earliest, received, encoder_pos, speed, life)
        lo, hi = read.earliest, read.received
        if speed >= 1.0:
            # Earlier reads, newest first, moved forward by the distance travelled since, at the
            # lowest and highest speed seen in between (each off by up to STEADY), while the
            # conveyor ran. Between two samples the drive can stray beyond their speeds by a·gap/2
            # and come back: a·gap²/4 counts, at most that over the lowest speed in time.
            v_min = v_max = speed
            strayed, later = 0.0, read
            for r in reversed(self._reads):
                counts = wrap_diff(encoder_pos, r.encoder_pos)
                if r.speed < 1.0 or counts < 0:
                    break
                v_min, v_max = min(v_min, r.speed), max(v_max, r.speed)
                gap = later.received - r.earliest
                strayed += self.max_accel * gap * gap / 4
                drift = strayed / (v_min * (1 - STEADY))
                # Whole counts: it moved more than counts − 1 and less than counts + 1.
                soonest = max(0, counts - 1) / (v_max * (1 + STEADY)) - drift
                latest = (counts + 1) / (v_min * (1 - STEADY)) + drift
                lo, hi = max(lo, r.earliest + soonest), min(hi, r.received + latest)
                later = r
        else:
            self._reads.clear()  # standing still: the encoder says nothing about time
        self._reads.append(read)
        self._previous, self._current = self._current, read
        self._sampled = Interval(lo, hi) if lo <= hi else Interval(read.earliest, read.received)
        return self._sampled

    @property
    def seen_until(self) -> float:
        """Every trigger that fired before this instant is in the current read: its entry was
        written at most `trigger_latency_s` after the edge, and the read was served after it was sent."""
        return self._current.sent - self.trigger_latency_s if self._current else -math.inf

    def new_epoch(self) -> None:
        self._newest_trigger = None

    def saw_triggers(self, positions: list[int | None]) -> int | None:
        """The latched positions of the triggers a read showed first, in sequence order. Returns the
        distance of one that came closer than `min_pitch_counts` after its predecessor (from then on
        the pitch bounds nothing), else None."""
        short = None
        for position in positions:
            previous, self._newest_trigger = self._newest_trigger, position
            if self.min_pitch_counts is None or previous is None or position is None:
                continue
            if wrap_diff(position, previous) < self.min_pitch_counts:
                short, self.min_pitch_counts = wrap_diff(position, previous), None
        return short

    @property
    def unseen_after(self) -> float:
        """No trigger the current read does not show can have fired before this instant: not before
        `seen_until`, nor before the conveyor reached the newest trigger's latched position plus the
        line's smallest pitch (it was short of it when this read was sampled, and gets there no
        faster than the speed seen and the drive's acceleration allow). The second bound lets a
        frame be matched as soon as its trigger is read, without waiting out the PLC's latency."""
        cur, sampled, pitch = self._current, self._sampled, self.min_pitch_counts
        if cur is None or sampled is None or self._newest_trigger is None or pitch is None or cur.speed < 1.0:
            return self.seen_until
        to_go = wrap_diff((self._newest_trigger + pitch) % 2**32, cur.encoder_pos)
        if to_go <= 0 or to_go > pitch:
            return self.seen_until  # already there (or the encoder went back): only the read bounds it
        v = cur.speed * (1 + STEADY)
        a = self.max_accel
        reach_s = (math.sqrt(v * v + 2 * a * to_go) - v) / a  # to_go = v·τ + a·τ²/2
        return max(self.seen_until, sampled.lo + reach_s)

    def trigger_interval(self, trigger_pos: int | None) -> Interval:
        """When a trigger the current read shows first fired: at most `trigger_latency_s` before the
        previous read was sent (that read did not hold its entry), before this one was answered, and
        `travelled` counts ago at the speeds seen. `trigger_pos` None: its position is unknown (ring
        overrun), only the hard bounds apply."""
        cur, sampled = self._current, self._sampled
        assert cur is not None and sampled is not None, "observe() a read first"
        after = self._previous.sent - self.trigger_latency_s if self._previous else -math.inf
        hard = Interval(after, sampled.hi)
        if trigger_pos is None or cur.speed < 1.0:
            return hard
        travelled = wrap_diff(cur.encoder_pos, trigger_pos)
        if travelled < 0:
            return hard
        speeds = [cur.speed] + ([self._previous.speed] if self._previous and self._previous.speed >= 1.0 else [])
        v_lo, v_hi = min(speeds) * (1 - STEADY), max(speeds) * (1 + STEADY)
        # Counts are whole: the conveyor stood in [P, P+1) at the read and in [L−1, L+1) at the edge
        # (a latch at the edge, or one count after it), so it moved more than P−L−1, less than P−L+2.
        elapsed = (travelled + 2) / v_lo
        slack = self._accel_error(elapsed, v_lo)
        if slack >= elapsed:
            return hard  # the speed could have changed too much since: the distance tells nothing
        by_distance = Interval(sampled.lo - elapsed - slack, sampled.hi - max(0, travelled - 1) / v_hi + slack)
        return by_distance.intersect(hard) or hard

    def _accel_error(self, span_s: float, speed: float) -> float:
        """How far off a time told from a distance at `speed` can be after `span_s` of unseen speed
        changes: a·τ²/(2·v) at the drive's largest acceleration (tracking.MAX_ACCEL)."""
        return self.max_accel * span_s * span_s / (2 * speed)
