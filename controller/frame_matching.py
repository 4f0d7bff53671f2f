"""Frame ↔ trigger association: which camera frame belongs to which trigger sequence number.

Sans-I/O. A frame is given to a part only when two independent clues agree: the camera's frame
counter is consistent with the counter offset learnt so far, and the frame arrived within a time
window of when the trigger was seen. A part with no such frame gets none (and so no verdict):
a missing frame is a fail-safe reject, a wrong frame could be an escape.

Learning the offset (camera counters never reset with the PLC) needs one unambiguous pair: exactly
one unmatched trigger and one unmatched frame inside the window. Dropped frames keep the offset
(the counter skips); a spurious frame shifts the camera counter, breaks the lock, and the offset is
learnt again from the next unambiguous pair.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MatchWindow:
    frame_latency_s: float = 0.0
    """Typical delay from trigger to frame arrival (exposure + readout + transfer); subtracted from
    the arrival time of frames that carry no synchronised exposure timestamp."""
    tolerance_s: float = 0.010
    """Allowed |arrival − trigger seen − latency|; keep below half the smallest part pitch in time."""
    hold_s: float = 0.5
    """How long an unmatched frame or trigger waits for its partner before it is given up."""


@dataclass(frozen=True, slots=True)
class Match:
    seq: int
    frame_counter: int


class FrameMatcher:
    def __init__(self, window: MatchWindow) -> None:
        self.window = window
        self.offset: int | None = None
        """counter − seq while locked."""
        self._triggers: dict[int, float] = {}
        self._frames: dict[int, float] = {}
        self.spurious_frames = 0
        self.relocks = 0

    def reset(self) -> None:
        """Forget pending triggers (PLC epoch change). The counter offset no longer applies either:
        sequence numbers restart at 1."""
        self._triggers.clear()
        self.offset = None

    def on_trigger(self, seq: int, triggered_at: float, now: float) -> list[Match]:
        """`triggered_at`: best estimate of the trigger instant (controller monotonic time)."""
        self._triggers[seq] = triggered_at
        return self._match(now)

    def on_frame(self, counter: int, exposed_at: float, now: float) -> list[Match]:
        """`exposed_at`: the exposure instant, or the arrival time minus `frame_latency_s`'s worth."""
        self._frames[counter] = exposed_at
        return self._match(now)

    def forget_trigger(self, seq: int) -> None:
        """The part finished without a frame (deadline passed); stop waiting for one."""
        self._triggers.pop(seq, None)

    def _fits(self, trigger_at: float, frame_at: float) -> bool:
        return abs(frame_at - trigger_at) <= self.window.tolerance_s

    def _match(self, now: float) -> list[Match]:
        matches: list[Match] = []
        if self.offset is not None:
            for counter, frame_at in sorted(self._frames.items()):
                seq = counter - self.offset
                trigger_at = self._triggers.get(seq)
                if trigger_at is not None and self._fits(trigger_at, frame_at):
                    matches.append(self._take(seq, counter))
                elif trigger_at is not None:
                    self.offset = None  # counter says yes, time says no: trust neither
                    break
        if self.offset is None:
            matches.extend(self._learn_offset())
        self._age_out(now)
        return matches

    def _learn_offset(self) -> list[Match]:
        for counter, frame_at in sorted(self._frames.items()):
            fitting = [s for s, t in self._triggers.items() if self._fits(t, frame_at)]
            rivals = [c for c, f in self._frames.items() if c != counter and any(
                self._fits(self._triggers[s], f) for s in fitting)]
            if len(fitting) == 1 and not rivals:
                seq = fitting[0]
                self.offset = counter - seq
                self.relocks += 1
                return [self._take(seq, counter), *self._match_locked()]
        return []

    def _match_locked(self) -> list[Match]:
        assert self.offset is not None
        out = []
        for counter, frame_at in sorted(self._frames.items()):
            seq = counter - self.offset
            trigger_at = self._triggers.get(seq)
            if trigger_at is not None and self._fits(trigger_at, frame_at):
                out.append(self._take(seq, counter))
        return out

    def _take(self, seq: int, counter: int) -> Match:
        del self._triggers[seq]
        del self._frames[counter]
        return Match(seq, counter)

    def _age_out(self, now: float) -> None:
        hold = self.window.hold_s
        for counter, at in list(self._frames.items()):
            if now - at > hold:
                del self._frames[counter]
                self.spurious_frames += 1
        for seq, at in list(self._triggers.items()):
            if now - at > hold:
                del self._triggers[seq]
