"""Part tracking: the pure core that decides, for every trigger, whether a verdict may still be
written and, if not, which fail-safe outcome it gets and why.

Sans-I/O: it takes PLC snapshots and the controller's own events with a monotonic `now` and
returns decisions. No clock, no sockets, no asyncio, so it can be tested exhaustively.

The deadline is a *position* (decision position minus a margin for the journal, the write and one
PLC cycle). Its time equivalent follows the current speed: a stopped conveyor stops the clock.
Not here: frame association (controller/core/frame_matching.py), byte layouts (controller/core/plc_codec.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from controller.core.plc_codec import TRIGGER_RING, U32, VERDICT_RING, PlcToVision

MAX_ACCEL = 20_000.0
"""Counts/s² the conveyor's speed can change at most (2 m/s² at 10 counts/mm: a drive that reaches
1 m/s in half a second). Positions projected from a read assume the worst: the conveyor sped up."""

MAX_IN_FLIGHT = VERDICT_RING - 1
"""The verdict ring holds 64 entries; one slot stays free so a writer never overtakes a reader."""


def wrap_diff(a: int, b: int) -> int:
    """Signed 32-bit difference a − b of two wrapping encoder counts (or sequence numbers)."""
    d = (a - b) % U32
    return d - U32 if d >= U32 // 2 else d


class Outcome(StrEnum):
    PASS = "pass"
    REJECT = "reject"
    FAILSAFE = "failsafe"


class Reason(StrEnum):
    MODEL_PASS = "model_pass"
    MODEL_REJECT = "model_reject"
    NO_FRAME = "no_frame"
    """No frame could be associated with the trigger before its deadline."""
    NO_BUDGET = "no_budget"
    """Admission control: the remaining time was smaller than the expected inference time."""
    LATE = "late"
    """A verdict existed but could no longer be written on time."""
    INFERENCE_FAILED = "inference_failed"
    INFERENCE_UNAVAILABLE = "inference_unavailable"
    NOT_READY = "not_ready"
    """Triggered while the controller was starting or unhealthy."""
    EPOCH_CHANGED = "epoch_changed"
    RING_OVERRUN = "ring_overrun"
    """More than 16 triggers between two reads: the PLC ring lost this part's trigger data."""
    SLOT_REUSED = "slot_reused"
    """64 newer triggers exist: this part's verdict slot now belongs to another part."""
    PLC_WRITE_FAILED = "plc_write_failed"
    JOURNAL_FAILED = "journal_failed"
    CONTROLLER_STOPPED = "controller_stopped"
    PLC_LINK_LOST = "plc_link_lost"
    """Triggered and decided while the controller could not read the PLC."""
    WATCHDOG_TRIPPED = "watchdog_tripped"
    """Its verdict was written, but the PLC decided it while our heartbeat was lost (rule 3)."""
    CONTROLLER_DOWN = "controller_down"
    """Decided while no controller ran (killed, crashed, restarting), or written just before and
    decided after the PLC's watchdog tripped; learned on restart (controller/core/resume.py)."""
    PLC_REJECTED = "plc_rejected"
    """Its verdict was written, but the PLC's counters say the gate rejected it fail-safe anyway."""


@dataclass(frozen=True, slots=True)
class Margins:
    """How early, before the decision point, a verdict must be in the PLC."""

    write_s: float = 0.010
    """Journal fsync + S7 write round trip, pessimistic."""
    plc_cycle_s: float = 0.004
    """One PLC scan (the decision is taken in some cycle after the position is reached)."""
    min_counts: int = 2
    """A floor in encoder counts, for a conveyor creeping at near-zero speed."""

    def counts(self, speed: float) -> int:
        return self.min_counts + int(speed * (self.write_s + self.plc_cycle_s) + 0.999)


@dataclass(slots=True)
class Part:
    epoch: int
    seq: int
    trigger_pos: int
    decision_pos: int
    seen_at: float
    frame_counter: int | None = None
    latched: bool = True
    """Its trigger position was read from the ring (False: lost to ring overrun, `trigger_pos` 0)."""
    writing: bool = False
    """Its verdict write is in flight: the write's own outcome decides, not expiry."""


@dataclass(frozen=True, slots=True)
class Finished:
    """A part's one and only outcome."""

    part: Part
    outcome: Outcome
    reason: Reason

    def revoked(self) -> Finished:
        """The outcome that replaces this one when the PLC restarted before deciding the part."""
        return Finished(self.part, Outcome.FAILSAFE, Reason.EPOCH_CHANGED)


@dataclass(slots=True)
class GateWatch:
    """A part whose verdict we wrote, or tried to: what the gate does with it depends on whether the
    write landed and on the PLC's state at the decision (ready, watchdog). Kept until the PLC's
    `decided_seq` passes it, when its counters tell what the gate did (see `Tracker._reconcile`)."""

    recorded: Finished
    """The outcome we recorded for it so far."""
    verdict: Outcome
    """What the written entry says: PASS or REJECT."""
    confirmed: bool
    """The write was acknowledged (False: it timed out or failed, and may or may not have landed)."""


@dataclass(frozen=True, slots=True)
class GateCounters:
    """The part of a PlcToVision snapshot that tells what the gate did, between two reads."""

    decided_seq: int
    rejects_vision: int
    rejects_failsafe: int
    watchdog_trips: int
    watchdog_tripped: bool

    @classmethod
    def of(cls, snap: PlcToVision) -> GateCounters:
        return cls(snap.decided_seq, snap.rejects_vision, snap.rejects_failsafe, snap.watchdog_trips,
                   snap.watchdog_tripped)  # fmt: skip


@dataclass(slots=True)
class SnapshotUpdate:
    new_parts: list[Part] = field(default_factory=list)
    seen: list[Part] = field(default_factory=list)
    """Every trigger first seen in this snapshot: the new parts and those that failed safe at once."""
    finished: list[Finished] = field(default_factory=list)
    epoch_changed: bool = False
    overrun: int = 0
    """Triggers lost to ring overrun in this snapshot (alarm-worthy)."""
    revoked: list[Finished] = field(default_factory=list)
    """Written outcomes of parts the PLC dropped undecided when it restarted. The PLC rejects what
    it no longer tracks, so each becomes fail-safe `epoch_changed` (see `Finished.revoked`). A part
    decided in the last read period before the restart cannot be told apart (the restart zeroed the
    counters and the decision ring): it is recorded so too, though its gate may have acted."""
    corrected: list[tuple[Finished, Finished]] = field(default_factory=list)
    """(recorded, what the gate did) for written parts the PLC decided otherwise than recorded:
    a PASS decided while the watchdog was tripped, or a write that timed out yet landed in time."""
    gate_ambiguous: int = 0
    """Parts whose gate outcome the counters could not tell apart from a neighbour's (see _reconcile)."""
    gate_inconsistent: bool = False
    """The PLC's counters do not fit what we wrote (another writer, or a contract mismatch)."""


class Tracker:
    """Tracks every trigger of the current epoch from intake to its single outcome."""

    def __init__(self, margins: Margins) -> None:
        self.margins = margins
        self.epoch: int | None = None
        self.parts: dict[int, Part] = {}
        self.awaiting_gate: dict[int, GateWatch] = {}
        """Written (or attempted) verdicts whose part the PLC has not decided yet."""
        self._gate: GateCounters | None = None
        """The gate counters of the last snapshot of this epoch."""
        self.last_seen_seq = 0
        self.trigger_seq = 0
        self.decided_seq = 0
        self._pos = 0
        self._speed = 0.0
        self._pos_at = 0.0

    # ---------------------------------------------------------------- PLC snapshots
    def on_snapshot(self, snap: PlcToVision, read_started: float, *, accept_parts: bool) -> SnapshotUpdate:
        """Apply one PlcToVision read. `read_started` is the monotonic time the read was sent:
        projecting from it over-estimates the position, which is the safe direction.
        With `accept_parts` False (controller not ready) new triggers fail safe at once."""
        upd = SnapshotUpdate()
        unseen = Reason.PLC_LINK_LOST
        if snap.epoch != self.epoch:
            unseen = Reason.EPOCH_CHANGED
            upd.epoch_changed = self.epoch is not None
            for part in list(self.parts.values()):
                upd.finished.append(self._finish(part, Outcome.FAILSAFE, Reason.EPOCH_CHANGED))
            upd.revoked = [w.recorded for w in self.awaiting_gate.values()
                           if w.recorded.outcome is not Outcome.FAILSAFE]  # fmt: skip
            self.awaiting_gate.clear()
            self._gate = None
            # At start-up, parts decided before we ran are history, not ours to record. After a
            # PLC restart every trigger of the new epoch is ours, even those already decided.
            self.last_seen_seq = 0 if self.epoch is not None else snap.decided_seq
            self.epoch = snap.epoch
        self._pos, self._speed, self._pos_at = snap.encoder_pos, max(0.0, snap.speed), read_started
        self.trigger_seq, self.decided_seq = snap.trigger_seq, snap.decided_seq
        if self._gate is not None:
            self._reconcile(self._gate, GateCounters.of(snap), upd)
        self._gate = GateCounters.of(snap)

        first_new = self.last_seen_seq + 1
        oldest_in_ring = snap.trigger_seq - TRIGGER_RING + 1
        for seq in range(first_new, snap.trigger_seq + 1):
            pos = snap.trigger_pos(seq) if seq >= oldest_in_ring else None
            part = Part(self.epoch, seq, pos or 0, (pos or 0) + snap.decision_offset, read_started,
                        latched=pos is not None)  # fmt: skip
            upd.seen.append(part)
            if seq <= snap.decided_seq:
                # Decided before we could see it: before we acknowledged a new epoch (rule 5), or
                # while the link was down. Either way the PLC had no verdict from us.
                upd.finished.append(Finished(part, Outcome.FAILSAFE, unseen))
            elif pos is None:
                upd.overrun += 1
                upd.finished.append(Finished(part, Outcome.FAILSAFE, Reason.RING_OVERRUN))
            elif not accept_parts:
                upd.finished.append(Finished(part, Outcome.FAILSAFE, Reason.NOT_READY))
            else:
                part.decision_pos %= U32
                self.parts[seq] = part
                upd.new_parts.append(part)
        self.last_seen_seq = max(self.last_seen_seq, snap.trigger_seq)
        upd.finished.extend(self.expire(read_started))
        return upd

    def expire(self, now: float) -> list[Finished]:
        """Fail safe every open part that can no longer get a verdict on time."""
        out = []
        for part in list(self.parts.values()):
            if part.writing:
                continue
            reason = self._cannot_write(part, now)
            if reason is not None:
                if reason is Reason.LATE and part.frame_counter is None:
                    reason = Reason.NO_FRAME
                out.append(self._finish(part, Outcome.FAILSAFE, reason))
        return out

    # ---------------------------------------------------------------- time and position
    def position(self, now: float) -> int:
        """Projected encoder position at `now`: the furthest the conveyor can have come since the
        last read (at its speed, speeding up as hard as it can), so a deadline is never late."""
        dt = max(0.0, now - self._pos_at)
        return (self._pos + int(self._speed * dt + MAX_ACCEL * dt * dt / 2)) % U32

    def counts_left(self, part: Part, now: float) -> int:
        """Encoder counts until the part's deadline (negative once passed)."""
        deadline_pos = part.decision_pos - self.margins.counts(self._speed)
        return wrap_diff(deadline_pos, self.position(now))

    def time_left(self, part: Part, now: float) -> float:
        """Seconds until the deadline at the current speed; infinite while the conveyor stands."""
        left = self.counts_left(part, now)
        if left <= 0:
            return 0.0
        return left / self._speed if self._speed > 1e-9 else float("inf")

    # ---------------------------------------------------------------- verdict rules
    def _cannot_write(self, part: Part, now: float) -> Reason | None:
        if part.epoch != self.epoch:
            return Reason.EPOCH_CHANGED
        if part.seq <= self.decided_seq:
            return Reason.LATE  # decided already (e.g. while the link was down): that says it all
        if wrap_diff(part.seq, self.trigger_seq - VERDICT_RING) <= 0:
            return Reason.SLOT_REUSED
        if self.counts_left(part, now) <= 0:
            return Reason.LATE
        return None

    def is_open(self, part: Part) -> bool:
        """`part` itself (not another epoch's part with its sequence number) still awaits its outcome."""
        return self.parts.get(part.seq) is part

    def may_write(self, part: Part, now: float) -> Reason | None:
        """None if a verdict for `part` can still be on time; otherwise why not."""
        if not self.is_open(part):
            # Already finished (e.g. expired: never write twice), or of another epoch.
            return Reason.LATE if part.epoch == self.epoch else Reason.EPOCH_CHANGED
        return self._cannot_write(part, now)

    def admit(self, part: Part, now: float, expected_s: float) -> Reason | None:
        """Admission control: None if inference expected to take `expected_s` fits the budget."""
        reason = self.may_write(part, now)
        if reason is None and self.time_left(part, now) < expected_s:
            return Reason.NO_BUDGET
        return reason

    def write_failed(self, part: Part, verdict: Outcome) -> Finished | None:
        """The write of `part`'s verdict failed or timed out: fail-safe `plc_write_failed`, and
        watched, since the entry may have landed in time all the same."""
        if not self.is_open(part):
            return None
        del self.parts[part.seq]
        done = Finished(part, Outcome.FAILSAFE, Reason.PLC_WRITE_FAILED)
        self.awaiting_gate[part.seq] = GateWatch(done, verdict, confirmed=False)
        return done

    def finish(self, part: Part, outcome: Outcome, reason: Reason) -> Finished | None:
        """Close `part`; None if it was already closed or is of another epoch (exactly one outcome
        per trigger, and never another part's)."""
        return self._finish(part, outcome, reason) if self.is_open(part) else None

    def _finish(self, part: Part, outcome: Outcome, reason: Reason) -> Finished:
        self.parts.pop(part.seq, None)
        done = Finished(part, outcome, reason)
        if outcome is not Outcome.FAILSAFE:
            self.awaiting_gate[part.seq] = GateWatch(done, outcome, confirmed=True)
        return done

    # ---------------------------------------------------------------- what the gate did
    def _reconcile(self, prev: GateCounters, now: GateCounters, upd: SnapshotUpdate) -> None:
        """Learn what the gate did with the written parts it decided since the last read.

        The PLC tells no per-part result, but its counters do per read: between two reads it decided
        `n` parts, `dv` of them rejected on a valid REJECT, `df` fail-safe, the rest passed. Parts we
        never wrote for can only be fail-safe; a written PASS can only pass or fail safe, a written
        REJECT only be a vision reject or fail safe. So the counts say how many of each kind acted.
        Where only some acted, the gate's reasons order them: a write that was acknowledged before
        one that was not, then by decision order (a watchdog trip fails the parts after it).
        """
        n = wrap_diff(now.decided_seq, prev.decided_seq)
        if n <= 0:
            return
        decided = [w for s, w in self.awaiting_gate.items()
                   if wrap_diff(s, now.decided_seq) <= 0 and wrap_diff(s, prev.decided_seq) > 0]  # fmt: skip
        for s in [s for s in self.awaiting_gate if wrap_diff(s, now.decided_seq) <= 0]:
            del self.awaiting_gate[s]
        dv = (now.rejects_vision - prev.rejects_vision) % U32
        df = (now.rejects_failsafe - prev.rejects_failsafe) % U32
        dp = n - dv - df
        tripped = now.watchdog_trips != prev.watchdog_trips or now.watchdog_tripped or prev.watchdog_tripped

        def order(w: GateWatch) -> tuple[bool, int]:
            return (not w.confirmed, wrap_diff(w.recorded.part.seq, prev.decided_seq))

        passes = sorted((w for w in decided if w.verdict is Outcome.PASS), key=order)
        rejects = sorted((w for w in decided if w.verdict is Outcome.REJECT), key=order)
        if not (0 <= dp <= len(passes) and 0 <= dv <= len(rejects)):
            upd.gate_inconsistent = True
            return
        upd.gate_ambiguous += (len(passes) if 0 < dp < len(passes) else 0) + (
            len(rejects) if 0 < dv < len(rejects) else 0)
        for acted, group in ((dp, passes), (dv, rejects)):
            for i, w in enumerate(group):
                if i < acted:
                    model = Reason.MODEL_PASS if w.verdict is Outcome.PASS else Reason.MODEL_REJECT
                    gate = Finished(w.recorded.part, w.verdict, model)
                else:
                    why = (Reason.WATCHDOG_TRIPPED if tripped
                           else Reason.PLC_REJECTED if w.confirmed else Reason.PLC_WRITE_FAILED)  # fmt: skip
                    gate = Finished(w.recorded.part, Outcome.FAILSAFE, why)
                if gate.outcome is not w.recorded.outcome:
                    upd.corrected.append((w.recorded, gate))


def check_line_geometry(decision_offset_counts: int, min_pitch_counts: int) -> None:
    """Refuse a line where more than 63 parts could be between trigger and decision point."""
    if min_pitch_counts <= 0:
        raise ValueError("the smallest part pitch must be positive")
    in_flight = -(-decision_offset_counts // min_pitch_counts)  # ceil
    if in_flight > MAX_IN_FLIGHT:
        raise ValueError(
            f"up to {in_flight} parts could be between trigger and decision point "
            f"(decision offset {decision_offset_counts} counts / smallest pitch {min_pitch_counts}); "
            f"the verdict ring allows {MAX_IN_FLIGHT}"
        )
