"""The pure tracking core: modular arithmetic, positional deadlines, and every fail-safe reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.core import plc_codec as c
from controller.core.tracking import Margins, Outcome, Reason, Tracker, check_line_geometry, wrap_diff

U32 = 2**32
MARGINS = Margins(write_s=0.01, plc_cycle_s=0.004, min_counts=2)


def snap(*, epoch: int = 7, pos: int = 0, speed: float = 10_000.0, trigger_seq: int = 0, decided: int = 0,
         triggers: dict[int, int] | None = None, offset: int = 4000) -> c.PlcToVision:  # fmt: skip
    ring = [(0, 0)] * 16
    for seq, tpos in (triggers or {}).items():
        ring[seq % 16] = (seq, tpos)
    return c.PlcToVision(
        life=1, status=3, version=c.INTERFACE_VERSION, epoch=epoch, encoder_pos=pos, speed=speed,
        decision_offset=offset,
        trigger_seq=trigger_seq, decided_seq=decided, rejects_vision=0, rejects_failsafe=0,
        verdicts_late=0, watchdog_trips=0, triggers=tuple(ring),
    )  # fmt: skip


@given(st.integers(0, U32 - 1), st.integers(-(2**31), 2**31 - 1))
def test_wrap_diff_inverts_modular_addition(a: int, d: int) -> None:
    assert wrap_diff((a + d) % U32, a) == d


def test_new_trigger_gets_positional_deadline_across_the_wrap() -> None:
    t = Tracker(MARGINS)
    near_wrap = U32 - 1000
    upd = t.on_snapshot(snap(pos=near_wrap, trigger_seq=1, triggers={1: near_wrap}), 0.0, accept_parts=True)
    (part,) = upd.new_parts
    assert part.decision_pos == (near_wrap + 4000) % U32
    margin = MARGINS.counts(10_000.0)
    assert t.counts_left(part, 0.0) == 4000 - margin
    assert t.time_left(part, 0.0) == pytest.approx((4000 - margin) / 10_000)


def test_a_stopped_conveyor_stops_the_clock() -> None:
    t = Tracker(MARGINS)
    t.on_snapshot(snap(trigger_seq=1, triggers={1: 0}), 0.0, accept_parts=True)
    for i in range(1, 1000):  # standing for 100 s, read every 0.1 s
        t.on_snapshot(snap(pos=1000, speed=0.0, trigger_seq=1, triggers={1: 0}), i * 0.1, accept_parts=True)
    part = t.parts[1]
    assert t.time_left(part, 99.9) == float("inf")
    assert t.may_write(part, 99.9) is None


def test_without_a_read_the_deadline_assumes_the_conveyor_sped_up() -> None:
    t = Tracker(MARGINS)
    t.on_snapshot(snap(trigger_seq=1, triggers={1: 0}), 0.0, accept_parts=True)
    t.on_snapshot(snap(pos=1000, speed=0.0, trigger_seq=1, triggers={1: 0}), 0.1, accept_parts=True)
    part = t.parts[1]
    assert t.may_write(part, 0.1) is None
    # 0.7 s without a read: a drive at its largest acceleration could have brought the part past its
    # deadline (20 000 counts/s² × 0.6² / 2 = 3600 counts); a verdict now could be late: refused.
    assert t.may_write(part, 0.7) is Reason.LATE


def test_part_expires_at_deadline_position_not_at_decision() -> None:
    t = Tracker(MARGINS)
    t.on_snapshot(snap(trigger_seq=1, triggers={1: 0}), 0.0, accept_parts=True)
    part = t.parts[1]
    margin = MARGINS.counts(10_000.0)
    t.on_snapshot(snap(pos=4000 - margin - 20, trigger_seq=1, triggers={1: 0}), 0.5, accept_parts=True)
    assert t.may_write(part, 0.5 + 0.0015) is None  # 15 counts + a fraction on: still before the deadline
    upd = t.on_snapshot(snap(pos=4000 - margin, trigger_seq=1, triggers={1: 0}), 1.0, accept_parts=True)
    (done,) = upd.finished
    assert (done.outcome, done.reason) == (Outcome.FAILSAFE, Reason.NO_FRAME)
    assert t.may_write(part, 1.0) is Reason.LATE  # never written after its outcome


def test_epoch_change_fails_every_open_part_safe() -> None:
    t = Tracker(MARGINS)
    t.on_snapshot(snap(trigger_seq=2, triggers={1: 0, 2: 10}), 0.0, accept_parts=True)
    upd = t.on_snapshot(snap(epoch=8), 0.001, accept_parts=True)
    assert upd.epoch_changed
    assert {(f.part.seq, f.reason) for f in upd.finished} == {(1, Reason.EPOCH_CHANGED), (2, Reason.EPOCH_CHANGED)}
    assert not t.parts


def test_ring_overrun_records_lost_triggers() -> None:
    t = Tracker(MARGINS)
    t.on_snapshot(snap(), 0.0, accept_parts=True)
    ring = {s: s * 10 for s in range(5, 21)}
    upd = t.on_snapshot(snap(trigger_seq=20, triggers=ring), 0.001, accept_parts=True)
    assert upd.overrun == 4
    assert sorted(f.part.seq for f in upd.finished if f.reason is Reason.RING_OVERRUN) == [1, 2, 3, 4]
    assert sorted(p.seq for p in upd.new_parts) == list(range(5, 21))


def test_verdict_slot_reuse_guard() -> None:
    t = Tracker(MARGINS)
    t.on_snapshot(snap(trigger_seq=1, triggers={1: 0}, offset=10**6), 0.0, accept_parts=True)
    ring = {s: 0 for s in range(50, 66)}
    upd = t.on_snapshot(snap(trigger_seq=65, triggers=ring, offset=10**6), 0.001, accept_parts=True)
    assert any(f.part.seq == 1 and f.reason is Reason.SLOT_REUSED for f in upd.finished)


def test_admission_refuses_a_part_whose_budget_is_too_small() -> None:
    t = Tracker(MARGINS)
    t.on_snapshot(snap(trigger_seq=1, triggers={1: 0}), 0.0, accept_parts=True)
    assert t.admit(t.parts[1], 0.0, expected_s=0.1) is None
    assert t.admit(t.parts[1], 0.0, expected_s=1.0) is Reason.NO_BUDGET


def test_not_ready_controller_fails_new_triggers_safe() -> None:
    t = Tracker(MARGINS)
    upd = t.on_snapshot(snap(trigger_seq=1, triggers={1: 0}), 0.0, accept_parts=False)
    assert [(f.part.seq, f.reason) for f in upd.finished] == [(1, Reason.NOT_READY)]


def test_exactly_one_outcome_per_part() -> None:
    t = Tracker(MARGINS)
    t.on_snapshot(snap(trigger_seq=1, triggers={1: 0}), 0.0, accept_parts=True)
    part = t.parts[1]
    assert t.finish(part, Outcome.PASS, Reason.MODEL_PASS) is not None
    assert t.finish(part, Outcome.FAILSAFE, Reason.LATE) is None


def test_a_part_of_an_old_epoch_never_closes_or_writes_for_the_new_part_with_its_seq() -> None:
    """Identity is (epoch, seq): an inference still running for old-epoch part A/1 when the PLC
    restarts must not close new-epoch part B/1, nor be allowed to write."""
    t = Tracker(MARGINS)
    t.on_snapshot(snap(trigger_seq=1, triggers={1: 0}), 0.0, accept_parts=True)
    old = t.parts[1]
    t.on_snapshot(snap(epoch=8, trigger_seq=1, triggers={1: 50}), 0.01, accept_parts=True)
    new = t.parts[1]
    assert new is not old and new.epoch == 8
    assert t.may_write(old, 0.01) is Reason.EPOCH_CHANGED
    assert t.admit(old, 0.01, expected_s=0.0) is Reason.EPOCH_CHANGED
    assert t.finish(old, Outcome.PASS, Reason.MODEL_PASS) is None
    assert t.write_failed(old, Outcome.PASS) is None
    assert t.parts[1] is new and t.may_write(new, 0.01) is None


def test_line_geometry_with_more_than_63_parts_in_flight_is_refused() -> None:
    check_line_geometry(4000, 300)
    with pytest.raises(ValueError, match="verdict ring allows 63"):
        check_line_geometry(64 * 100, 100)
