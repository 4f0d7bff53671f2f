"""Stateful property test: the tracking core driving the simulator's PLC program (rules 1–5) in
virtual time, with random speeds, stops, encoder wraps, trigger bursts, slow or missing inference,
and PLC restarts.

Invariants, checked after every step:
- no part passes the gate without its own PASS, written for its epoch;
- a verdict the tracker allowed to be written is never late at the gate (no fail-safe for it);
- no verdict is written into a slot a newer part owns, or for another epoch;
- every trigger gets exactly one outcome (checked when the line has run empty).
"""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from controller.core import plc_codec as c
from controller.core.tracking import MAX_ACCEL, Margins, Outcome, Reason, Tracker, wrap_diff
from sim.plc_program import PlcProgram

SCAN_S = 0.001
OFFSET = 1000
MARGINS = Margins(write_s=0.004, plc_cycle_s=0.002, min_counts=2)


class LineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.vision = bytearray(c.VISION_TO_PLC_SIZE)
        self.prog = PlcProgram(bytearray(c.PLC_TO_VISION_SIZE), self.vision, decision_offset=OFFSET,
                               rng=random.Random(0))  # fmt: skip
        self.tracker = Tracker(MARGINS)
        self.t = 0.0
        self.pos = float(2**32 - 3000)  # wraps within the first parts
        self.speed = 10_000.0
        self.life = 0
        self.acked = 0
        self.pending_edges: list[tuple[int, int, int]] = []
        self.outcomes: dict[tuple[int, int], str] = {}
        self.written: dict[tuple[int, int], int] = {}
        self.polled_at, self.polled_speed = 0.0, 0.0
        self.allowed = 0
        """Verdicts the tracker allowed to be written (liveness: not every run may end with none)."""
        self.dropped_by_restart: set[tuple[int, int]] = set()
        """Parts the PLC stopped tracking at a restart: rejected at the gate whatever was written."""
        self.decided_unseen: set[tuple[int, int]] = set()
        """Parts decided after the controller's last read and before a PLC restart."""

    # ---------------------------------------------------------------- the plant and the PLC
    def _scan(self) -> None:
        self.life = (self.life + 1) % 65536
        self.vision[:8] = c.encode_vision_header(c.VisionHeader(self.life, c.READY, 1, self.acked))
        edges, self.pending_edges = self.pending_edges, []
        self.prog.scan(self.t, int(self.pos) % 2**32, self.speed, True, edges)

    @rule(dt=st.floats(0.0005, 0.03), speed=st.sampled_from([0.0, 2_000.0, 10_000.0, 20_000.0]))
    def run_conveyor(self, dt: float, speed: float) -> None:
        for _ in range(max(1, int(dt / SCAN_S))):
            self._drive_towards(speed)

    def _drive_towards(self, speed: float) -> None:
        """One scan of the conveyor heading for `speed`. A stop may be instant (an emergency stop);
        speeding up is bounded by MAX_ACCEL, the drive's limit the tracker's projection relies on
        (a plant that jumps from standstill to full speed between two polls is not a conveyor)."""
        self.speed = speed if speed <= self.speed else min(speed, self.speed + MAX_ACCEL * SCAN_S)
        self.t += SCAN_S
        self.pos += self.speed * SCAN_S
        self._scan()

    @precondition(lambda self: self.speed > 0)
    @rule(burst=st.integers(1, 3))
    def photo_eye(self, burst: int) -> None:
        for i in range(burst):
            self.pending_edges.append((0, 0, (int(self.pos) + i) % 2**32))

    @rule()
    def plc_restart(self) -> None:
        self.dropped_by_restart |= {(self.prog.epoch, t.seq) for t in self.prog.fifo}
        # Decided since the controller's last read, then the PLC zeroed its DB: the controller cannot
        # know the gate acted, and records the written verdict fail-safe `epoch_changed` as if dropped.
        self.decided_unseen |= {(d.epoch, d.seq) for d in self.prog.log
                                if d.epoch == self.prog.epoch and d.decided_at > self.polled_at}  # fmt: skip
        self.prog.start(self.t)

    # ---------------------------------------------------------------- the controller
    @initialize()
    def controller_starts_before_the_line(self) -> None:
        self.poll()

    @rule()
    def poll(self) -> None:
        snap = c.decode_plc_to_vision(bytes(self.prog.plc_db))
        upd = self.tracker.on_snapshot(snap, self.t, accept_parts=True)
        self.polled_at, self.polled_speed = self.t, snap.speed
        for written in upd.revoked:  # the controller learns that its written verdict never acted
            assert (written.part.epoch, written.part.seq) in self.dropped_by_restart | self.decided_unseen
        # Every written verdict here lands in time with the heartbeat alive: the gate counters must
        # agree with what the tracker recorded.
        assert not upd.corrected and not upd.gate_inconsistent, upd.corrected
        if snap.epoch != self.acked:
            # As the controller does: clear the verdict ring, then acknowledge the epoch.
            self.vision[c.VERDICT_RING_OFFSET :] = bytes(c.VISION_TO_PLC_SIZE - c.VERDICT_RING_OFFSET)
            self.acked = snap.epoch
        for done in upd.finished:
            self._outcome(done.part.epoch, done.part.seq, done.outcome)

    @precondition(lambda self: self.tracker.parts)
    @rule(pick=st.integers(0, 63), reject=st.booleans(), infer_s=st.floats(0.0, 0.15))
    def verdict_ready(self, pick: int, reject: bool, infer_s: float) -> None:
        """Inference for one open part finishes after `infer_s`; write it only if still on time."""
        part = sorted(self.tracker.parts.values(), key=lambda p: p.seq)[pick % len(self.tracker.parts)]
        self.run_conveyor(infer_s, self.speed)
        refused = self.tracker.may_write(part, self.t)
        snap = c.decode_plc_to_vision(bytes(self.prog.plc_db))
        if refused is None:
            self.allowed += 1
        elif part.epoch == snap.epoch and self.speed > 0:
            # Liveness: the tracker may refuse only what really cannot be on time any more. Its
            # projection from the last poll over-estimates the position by at most what the conveyor
            # can gain between polls; beyond that margin a refusal would reject a part for nothing.
            left = wrap_diff(part.decision_pos, int(self.pos) % 2**32)
            v = self.polled_speed  # the tracker projects at the speed of its last read
            dt = self.t - self.polled_at  # and assumes the drive sped up as hard as it can since
            slack = MARGINS.counts(v) + v * dt + MAX_ACCEL * dt * dt / 2 + 2 * max(v, self.speed) * SCAN_S
            owned = part.seq > snap.trigger_seq - c.VERDICT_RING and part.seq > snap.decided_seq
            assert not (owned and left > slack), f"seq {part.seq} refused ({refused}) with {left} counts left"
        if refused is not None:
            return  # the next poll expires it
        if part.epoch == snap.epoch:  # (after an unseen restart the epoch's clear-then-ack protects)
            assert part.seq > snap.trigger_seq - c.VERDICT_RING, "slot owned by a newer part"
        # The write lands within the write margin: one scan later, at most.
        self.t += SCAN_S
        self.pos += self.speed * SCAN_S
        code = c.REJECT if reject else c.PASS
        off = c.verdict_offset(part.seq)
        self.vision[off : off + 8] = c.encode_verdict(c.VerdictEntry(part.seq, code, 0, 0))
        self._scan()
        done = self.tracker.finish(part, Outcome.REJECT if reject else Outcome.PASS,
                                   Reason.MODEL_REJECT if reject else Reason.MODEL_PASS)  # fmt: skip
        assert done is not None
        self._outcome(part.epoch, part.seq, done.outcome)
        self.written[(part.epoch, part.seq)] = code

    def _outcome(self, epoch: int, seq: int, outcome: Outcome) -> None:
        assert (epoch, seq) not in self.outcomes, f"second outcome for {epoch}/{seq}"
        self.outcomes[(epoch, seq)] = outcome.value

    # ---------------------------------------------------------------- invariants
    @invariant()
    def gate_follows_only_own_in_time_verdicts(self) -> None:
        for d in self.prog.log:
            code = self.written.get((d.epoch, d.seq))
            if d.gate == "pass":
                assert code == c.PASS, f"seq {d.seq} passed without its own PASS"
            if code is not None and d.epoch == self.acked and (d.epoch, d.seq) not in self.dropped_by_restart:
                # Written while allowed: it must have been there at the decision.
                assert d.gate == ("pass" if code == c.PASS else "reject_vision"), f"seq {d.seq} {d.gate}"

    def teardown(self) -> None:
        """Run the line empty: every trigger of the current epoch ends with exactly one outcome."""
        for _ in range(2000):  # from standstill: 0.5 s and 2500 counts up to 10 000/s, then > OFFSET more
            if not self.prog.fifo:
                break
            self._drive_towards(max(self.speed, 10_000.0))
        self.poll()
        epoch = self.tracker.epoch
        triggered = {d.seq for d in self.prog.log if d.epoch == epoch}
        recorded = {seq for (ep, seq) in self.outcomes if ep == epoch}
        assert triggered <= recorded, f"triggers without outcome: {sorted(triggered - recorded)[:5]}"


LineMachine.TestCase.settings = settings(max_examples=500, stateful_step_count=40, deadline=None)
TestLine = LineMachine.TestCase
