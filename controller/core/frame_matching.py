"""Frame ↔ trigger association: which camera frame belongs to which trigger sequence number.

Sans-I/O. Every instant is an interval that contains the truth (controller/core/plc_clock.py): a
trigger's from the reads around it, a frame's from its exposure time and the camera's tolerance.
A frame is given to a part only when the evidence proves it, never on a best guess:

- **Time says exactly one trigger.** Of all triggers, those already seen (matched or not) and those
  not yet seen (they fired after the last read was sampled), exactly one can have caused this
  exposure. While a later read could still show another candidate, the frame waits for that read.
- **And the counter agrees.** While locked, the camera's frame counter minus the trigger's
  sequence number equals the learnt offset. If time proves another trigger, the lock breaks and
  nothing is matched until it is relearnt.
- **And the exposure shows the part.** The trigger's instant is known within `same_part_s`, so even
  a glitch exposure that fits it shows this part, not the gap or a neighbour.
- **Learning the lock** needs two consecutive proven pairs with the same offset, each proven both
  ways: the frame fits only that trigger, and the trigger fits only that frame (of those that
  arrived, and of those that could still arrive: frames come in exposure order).

A part with no proven frame gets none: a missing frame is a fail-safe reject (`no_frame`), a wrong
frame could be an escape. Dropped frames keep the offset (the counter skips); a spurious frame
shifts the counter, breaks the lock, and costs the parts until two proven pairs relock it.
Assumption: a frame's exposure time is known within `tolerance_s` of its trigger's instant (a
synchronised camera clock, or arrival stamped at the driver minus a steady `frame_latency_s`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.core.plc_clock import Interval

UNSEEN = -1
"""Stands for a trigger (or frame) that may exist but has not been seen yet."""


@dataclass(frozen=True, slots=True)
class MatchWindow:
    frame_latency_s: float = 0.0
    """Typical delay from trigger to frame arrival (exposure + readout + transfer); subtracted from
    the arrival time of frames that carry no synchronised exposure timestamp."""
    tolerance_s: float = 0.010
    """Largest |exposure − trigger instant|. Two triggers closer than twice this (plus their
    intervals' widths) cannot be told apart by time: keep it well below the smallest part pitch."""
    same_part_s: float = 0.010
    """An exposure this close to a trigger's instant still shows that part (its length in time at
    line speed). A trigger known only within an interval wider than this less `tolerance_s` cannot
    take a frame: a glitch exposure inside it could show the gap or another part."""
    frame_delay_s: float = 0.100
    """The longest a frame takes from exposure to arrival: after that, no frame can still turn up
    for a trigger (sooner than waiting for the next part's frame to prove it)."""
    hold_s: float = 0.5
    """How long a frame or trigger is remembered (as a candidate for others, and waiting for its
    partner); longer than any part's time from trigger to deadline."""


@dataclass(frozen=True, slots=True)
class Match:
    seq: int
    frame_counter: int


@dataclass(slots=True)
class _Trigger:
    at: Interval
    open: bool = True
    """Still waiting for its frame (False: matched, or its part already has an outcome)."""


@dataclass(slots=True)
class _Frame:
    exposed_at: float
    arrived: float
    open: bool = True


class FrameMatcher:
    def __init__(self, window: MatchWindow) -> None:
        self.window = window
        self.offset: int | None = None
        """counter − seq while locked."""
        self._triggers: dict[int, _Trigger] = {}
        self._frames: dict[int, _Frame] = {}
        self._seen_until = -math.inf
        """Every trigger that fired before this instant has been seen."""
        self._newest_exposure = -math.inf
        self._now = -math.inf
        self._proven: tuple[int, int] | None = None
        """While unlocked: the last pair proven both ways, (seq, counter), waiting for its successor."""
        self.spurious_frames = 0
        """Frames given up unmatched (spurious, or their part was not provable in time)."""
        self.relocks = 0
        self.lock_breaks = 0

    def reset(self) -> None:
        """A new PLC epoch: sequence numbers restart at 1, so the triggers and the offset go."""
        self._triggers.clear()
        self.offset = None
        self._proven = None
        self._seen_until = -math.inf

    def on_triggers(self, triggers: list[tuple[int, Interval, bool]], seen_until: float, now: float) -> list[Match]:
        """One PLC read: the triggers it showed first, as (seq, when it fired, still open: False for
        a part that already has its outcome), and the instant before which every trigger is seen."""
        for seq, at, is_open in triggers:
            self._triggers[seq] = _Trigger(at, is_open)
        self._seen_until = max(self._seen_until, seen_until)
        return self._match(now)

    def on_frame(self, counter: int, exposed_at: float, now: float) -> list[Match]:
        """`exposed_at`: the exposure instant, or the arrival time minus `frame_latency_s`."""
        self._frames[counter] = _Frame(exposed_at, now)
        self._newest_exposure = max(self._newest_exposure, exposed_at)
        return self._match(now)

    def forget_trigger(self, seq: int) -> None:
        """The part has its outcome (e.g. its deadline passed): it takes no frame any more, but stays
        a candidate, so that its frame arriving late cannot be taken for a neighbour's."""
        trigger = self._triggers.get(seq)
        if trigger is not None:
            trigger.open = False

    def explain(self, seq: int) -> dict[str, object]:
        """Why `seq` has no frame, for the log: its instant and the frames that could be its own."""
        trigger = self._triggers.get(seq)
        if trigger is None:
            return {"trigger": "forgotten"}
        near = {c: f for c, f in self._frames.items() if abs(f.exposed_at - trigger.at.lo) < 0.2}
        return {
            "trigger_ms": [round(trigger.at.lo * 1e3, 1), round(trigger.at.hi * 1e3, 1)],
            "seen_until_ms": round(self._seen_until * 1e3, 1), "offset": self.offset,
            "frames": {c: {"exposed_ms": round(f.exposed_at * 1e3, 1), "open": f.open,
                           "triggers": self._triggers_for(f)} for c, f in sorted(near.items())},
        }

    # ------------------------------------------------------------------ evidence
    def _fits(self, at: Interval, exposed_at: float) -> bool:
        tol = self.window.tolerance_s
        return at.lo - tol <= exposed_at <= at.hi + tol

    def _triggers_for(self, frame: _Frame) -> list[int]:
        """Every trigger that could have caused `frame`, UNSEEN included where a later read could show one."""
        out = [s for s, t in self._triggers.items() if self._fits(t.at, frame.exposed_at)]
        if frame.exposed_at + self.window.tolerance_s >= self._seen_until:
            out.append(UNSEEN)
        return out

    def _frames_for(self, trigger: _Trigger) -> list[int]:
        """Every frame that could belong to `trigger`, UNSEEN included where one could still arrive."""
        out = [c for c, f in self._frames.items() if self._fits(trigger.at, f.exposed_at)]
        last_exposure = trigger.at.hi + self.window.tolerance_s
        if self._newest_exposure <= last_exposure and self._now <= last_exposure + self.window.frame_delay_s:
            out.append(UNSEEN)
        return out

    # ------------------------------------------------------------------ decisions
    def _match(self, now: float) -> list[Match]:
        self._now = max(self._now, now)
        self._age_out(now)
        matches: list[Match] = []
        for counter in sorted(c for c, f in self._frames.items() if f.open):
            frame = self._frames[counter]
            if not frame.open:
                continue  # taken while relocking
            candidates = self._triggers_for(frame)
            if len(candidates) != 1 or candidates[0] == UNSEEN:
                continue  # not proven (yet): wait for the next read, or for good if ambiguous
            seq = candidates[0]
            at = self._triggers[seq].at
            if at.hi - at.lo + self.window.tolerance_s > self.window.same_part_s:
                continue  # too vague a trigger instant to prove the exposure shows this part
            if self.offset is not None and counter - seq != self.offset:
                self.offset, self._proven = None, None  # time proves another trigger than the counter
                self.lock_breaks += 1
            if self.offset is not None:
                matches += self._take(seq, counter)
            else:
                matches += self._learn(seq, counter)
        return matches

    def _learn(self, seq: int, counter: int) -> list[Match]:
        if self._frames_for(self._triggers[seq]) != [counter]:
            return []  # the trigger could still have another frame: not proven both ways
        proven, self._proven = self._proven, (seq, counter)
        if proven is None or proven[0] != seq - 1 or proven[1] - proven[0] != counter - seq:
            return []
        self.offset = counter - seq
        self.relocks += 1
        self._proven = None
        return self._take(*proven) + self._take(seq, counter)

    def _take(self, seq: int, counter: int) -> list[Match]:
        trigger, frame = self._triggers.get(seq), self._frames[counter]
        frame.open = False
        if trigger is None or not trigger.open:
            return []  # its part already has an outcome: the frame is used up, nobody else gets it
        trigger.open = False
        return [Match(seq, counter)]

    def _age_out(self, now: float) -> None:
        hold = self.window.hold_s
        for counter, frame in list(self._frames.items()):
            if now - frame.arrived > hold:
                del self._frames[counter]
                self.spurious_frames += frame.open
        for seq, trigger in list(self._triggers.items()):
            if now - trigger.at.hi > hold:
                del self._triggers[seq]
