"""The pure parts of the cyclic PLC exchange: the VisionToPlc image and its writes, the snapshot
clock, and learning from the PLC's counters what the gate did with written verdicts."""

from __future__ import annotations

import random

from controller.core import plc_codec as c
from controller.core.plc_clock import SnapshotClock
from controller.core.tracking import GateCounters, Margins, Outcome, Reason, Tracker
from controller.core.vision_block import VisionBlock

PDU_WRITE = 480 - 35


def test_one_request_carries_header_and_entries_up_to_the_newest() -> None:
    block = VisionBlock()
    block.set_header(c.VisionHeader(7, c.READY, 1, 99))
    block.put(c.VerdictEntry(3, c.PASS, 0, 12))
    ((offset, data),) = block.next_writes(PDU_WRITE)
    assert offset == 0 and len(data) == c.verdict_offset(3) + 8
    assert c.decode_vision_header(data) == c.VisionHeader(7, c.READY, 1, 99)
    assert c.decode_verdict(data, c.verdict_offset(3)) == c.VerdictEntry(3, c.PASS, 0, 12)
    block.written()
    assert block.next_writes(PDU_WRITE) == [(0, data[:8])]  # heartbeat only


def test_entries_beyond_the_pdu_go_in_a_second_request_split_at_an_entry() -> None:
    block = VisionBlock()
    block.put(c.VerdictEntry(2, c.PASS, 0, 0))
    block.put(c.VerdictEntry(63, c.REJECT, 1, 9000))
    (o1, d1), (o2, d2) = block.next_writes(PDU_WRITE)
    assert o1 == 0 and len(d1) <= PDU_WRITE and (len(d1) - 8) % 8 == 0
    assert o2 == len(d1) and o2 + len(d2) == c.VISION_TO_PLC_SIZE
    image = d1 + d2
    assert c.decode_verdict(image, c.verdict_offset(63)).seq == 63


def test_a_failed_entry_is_taken_back_unless_its_slot_moved_on() -> None:
    block = VisionBlock()
    block.put(c.VerdictEntry(5, c.PASS, 0, 0))
    block.written()
    block.retract(5)
    ((_, data),) = block.next_writes(PDU_WRITE)
    assert c.decode_verdict(data, c.verdict_offset(5)).seq == 0
    block.put(c.VerdictEntry(69, c.PASS, 0, 0))  # the same slot, a newer part
    block.retract(5)
    ((_, data),) = block.next_writes(PDU_WRITE)
    assert c.decode_verdict(data, c.verdict_offset(69)).seq == 69


def test_snapshot_clock_narrows_a_late_handled_read_at_steady_speed() -> None:
    """A reply the event loop handles 30–80 ms late (a stall) is sharpened by the reads just before it:
    the interval keeps the truth and is far narrower than the read's own."""
    rng = random.Random(3)
    clock = SnapshotClock()
    speed, t = 10_000.0, 1.0
    for i in range(200):
        sent = t
        sampled = sent + rng.uniform(0.0002, 0.001)
        received = sampled + rng.uniform(0.0002, 0.001)
        stalled = i % 20 == 19
        if stalled:
            received += rng.uniform(0.030, 0.080)
        est = clock.observe(sent, received, int(sampled * speed) % 2**32, speed, life=i)
        assert est.lo <= sampled <= est.hi  # an interval that holds the truth, never a guess
        assert est.hi <= received
        if stalled:
            assert est.hi - est.lo < min(0.015, (received - sent) / 2)
        t = received + 0.002


def test_snapshot_clock_never_leaves_the_current_read_when_the_speed_changes() -> None:
    clock = SnapshotClock()
    for i in range(8):
        clock.observe(i * 0.1, i * 0.1 + 0.04, i * 1000, 10_000.0, life=i)
    est = clock.observe(1.0, 1.04, 9_000, 10_100.0, life=9)  # within 2 %, but the position disagrees
    # The read's own bounds: after the previous read was sent (the PLC's life moved), before the reply.
    assert 0.7 <= est.lo <= est.hi <= 1.04


def test_values_of_a_scan_older_than_the_request_are_never_dated_after_it() -> None:
    """A PLC (or the simulator's scan thread) late with its cycle: the block still holds the scan
    before the request. With the life counter unchanged the read is dated as the previous one."""
    clock = SnapshotClock()
    clock.observe(1.000, 1.001, 10_000, 10_000.0, life=5)  # sampled at 1.0005
    est = clock.observe(1.003, 1.004, 10_000, 10_000.0, life=5)  # no scan since: still 1.0005's values
    assert est.lo <= 1.0005 <= est.hi


def _tracker_with_written(verdicts: dict[int, Outcome], failed: frozenset[int] = frozenset()) -> Tracker:
    t = Tracker(Margins())
    n = max(verdicts)
    ring = [(0, 0)] * 16
    for s in range(1, n + 1):
        ring[s % 16] = (s, s * 100)
    first = c.PlcToVision(1, 3, 1, 7, 0, 0.0, 100_000, n, 0, 0, 0, 0, 0, tuple(ring))
    t.on_snapshot(first, 0.0, accept_parts=True)
    for seq, verdict in verdicts.items():
        if seq in failed:
            t.write_failed(t.parts[seq], verdict)
        else:
            reason = Reason.MODEL_PASS if verdict is Outcome.PASS else Reason.MODEL_REJECT
            t.finish(t.parts[seq], verdict, reason)
    return t


def _next(t: Tracker, decided: int, rv: int, rf: int, trips: int = 0, tripped: bool = False) -> list[tuple[int, str]]:
    assert t._gate is not None
    n = t.trigger_seq
    ring = [(0, 0)] * 16
    for s in range(max(1, n - 15), n + 1):
        ring[s % 16] = (s, s * 100)
    status = 3 | (c.WATCHDOG_TRIPPED if tripped else 0)
    snap = c.PlcToVision(2, status, 1, 7, 0, 0.0, 100_000, n, decided, rv, rf, 0, trips, tuple(ring))
    upd = t.on_snapshot(snap, 0.1, accept_parts=True)
    assert not upd.gate_inconsistent
    return sorted((gate.part.seq, f"{gate.outcome.value}:{gate.reason.value}") for _, gate in upd.corrected)


def test_gate_counters_that_match_the_written_verdicts_change_nothing() -> None:
    t = _tracker_with_written({1: Outcome.PASS, 2: Outcome.REJECT, 3: Outcome.PASS})
    assert _next(t, decided=3, rv=1, rf=0) == []
    assert not t.awaiting_gate


def test_passes_decided_after_a_watchdog_trip_are_recorded_fail_safe() -> None:
    t = _tracker_with_written({1: Outcome.PASS, 2: Outcome.PASS, 3: Outcome.PASS, 4: Outcome.REJECT})
    # One part passed, the rest failed safe: the watchdog tripped after the first decision.
    assert _next(t, decided=4, rv=0, rf=3, trips=1, tripped=True) == [
        (2, "failsafe:watchdog_tripped"), (3, "failsafe:watchdog_tripped"), (4, "failsafe:watchdog_tripped")]


def test_a_timed_out_write_that_landed_in_time_is_recorded_as_the_gate_decided() -> None:
    t = _tracker_with_written({1: Outcome.PASS, 2: Outcome.PASS}, failed=frozenset({2}))
    assert _next(t, decided=2, rv=0, rf=0) == [(2, "pass:model_pass")]


def test_gate_counters_per_read() -> None:
    snap = c.PlcToVision(1, 3 | c.WATCHDOG_TRIPPED, 1, 7, 0, 0.0, 100, 9, 5, 2, 1, 0, 1, ((0, 0),) * 16)
    assert GateCounters.of(snap) == GateCounters(5, 2, 1, 1, True)
