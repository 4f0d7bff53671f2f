"""The simulator's PLC program (rules 1–5 of the contract) in virtual time, over raw DB bytes."""

from __future__ import annotations

import random

from controller.core import plc_codec as c
from sim.plc_program import PlcProgram

OFFSET = 4000


def make() -> tuple[PlcProgram, bytearray]:
    vision = bytearray(c.VISION_TO_PLC_SIZE)
    prog = PlcProgram(bytearray(c.PLC_TO_VISION_SIZE), vision, decision_offset=OFFSET, rng=random.Random(1))
    return prog, vision


def ack(prog: PlcProgram, vision: bytearray, life: int, ready: bool = True) -> None:
    vision[:8] = c.encode_vision_header(c.VisionHeader(life, c.READY if ready else 0, 1, prog.epoch))


def verdict(vision: bytearray, seq: int, code: int) -> None:
    off = c.verdict_offset(seq)
    vision[off : off + 8] = c.encode_verdict(c.VerdictEntry(seq, code, 0, 0))


def test_trigger_writes_the_ring_and_decision_needs_own_pass() -> None:
    prog, vision = make()
    ack(prog, vision, 1)
    assert prog.scan(0.0, 100, 1e4, True, [(11, 0, 100), (12, 1, 200)]) == [1, 2]
    snap = c.decode_plc_to_vision(bytes(prog.plc_db))
    assert snap.trigger_seq == 2 and snap.trigger_pos(1) == 100 and snap.trigger_pos(2) == 200
    verdict(vision, 1, c.PASS)
    verdict(vision, 2, c.REJECT)
    ack(prog, vision, 2)
    prog.scan(0.4, 100 + OFFSET + 100, 1e4, True, [])
    assert [(d.seq, d.gate) for d in prog.log] == [(1, "pass"), (2, "reject_vision")]


def test_missing_wrong_seq_or_unacked_epoch_rejects_failsafe() -> None:
    prog, vision = make()
    ack(prog, vision, 1)
    prog.scan(0.0, 0, 1e4, True, [(1, 0, 0), (2, 0, 10), (3, 0, 20)])
    verdict(vision, 2 + 64, c.PASS)  # another part's entry in seq 2's slot
    verdict(vision, 3, 0x00)  # neither PASS nor REJECT
    prog.scan(0.5, OFFSET + 100, 1e4, True, [])
    assert [d.gate for d in prog.log] == ["reject_failsafe"] * 3
    prog2, vision2 = make()
    vision2[:8] = c.encode_vision_header(c.VisionHeader(1, c.READY, 1, prog2.epoch + 1))
    prog2.scan(0.0, 0, 1e4, True, [(1, 0, 0)])
    verdict(vision2, 1, c.PASS)
    prog2.scan(0.5, OFFSET, 1e4, True, [])
    assert prog2.log[0].gate == "reject_failsafe"


def test_watchdog_trips_on_stale_life_and_clears_when_it_moves() -> None:
    prog, vision = make()
    ack(prog, vision, 1)
    prog.scan(0.0, 0, 1e4, True, [])
    prog.scan(0.25, 0, 1e4, True, [])
    snap = c.decode_plc_to_vision(bytes(prog.plc_db))
    assert snap.watchdog_tripped and snap.watchdog_trips == 1
    ack(prog, vision, 2)
    prog.scan(0.26, 0, 1e4, True, [])
    assert not c.decode_plc_to_vision(bytes(prog.plc_db)).watchdog_tripped


def test_late_verdict_counts_once() -> None:
    prog, vision = make()
    ack(prog, vision, 1)
    prog.scan(0.0, 0, 1e4, True, [(1, 0, 0)])
    prog.scan(0.1, OFFSET, 1e4, True, [])
    verdict(vision, 1, c.PASS)
    ack(prog, vision, 2)
    prog.scan(0.11, OFFSET, 1e4, True, [])
    prog.scan(0.12, OFFSET, 1e4, True, [])
    assert c.decode_plc_to_vision(bytes(prog.plc_db)).verdicts_late == 1


def test_restart_gives_a_new_epoch_and_clears_tracking() -> None:
    prog, vision = make()
    ack(prog, vision, 1)
    prog.scan(0.0, 0, 1e4, True, [(1, 0, 0)])
    old = prog.epoch
    prog.start()
    snap = c.decode_plc_to_vision(bytes(prog.plc_db))
    assert snap.epoch not in (0, old) and snap.trigger_seq == 0 and not prog.fifo
    assert snap.version == c.INTERFACE_VERSION and snap.decision_offset == OFFSET


def test_shadow_mode_gate_follows_the_reference_and_reports_both() -> None:
    """Rule 6: requested by the controller for this epoch, the gate follows the existing inspection's
    verdict per part (no reference: reject) while vision is counted as ever; the decision ring says
    what the gate did, the vision verdict it read and the reference, fields before seq."""
    references = {11: False, 12: True, 13: False, 14: None}  # part_id -> reference rejects
    vision = bytearray(c.VISION_TO_PLC_SIZE)
    prog = PlcProgram(bytearray(c.PLC_TO_VISION_SIZE), vision, decision_offset=OFFSET, rng=random.Random(1),
                      reference_of=references.get, product_id=7)  # fmt: skip
    prog.start()
    vision[:8] = c.encode_vision_header(c.VisionHeader(1, c.READY | c.REQUEST_SHADOW, 1, prog.epoch))
    prog.scan(0.0, 0, 1e4, True, [(11, 1, 0), (12, 0, 10), (13, 0, 20), (14, 0, 30)])
    verdict(vision, 1, c.REJECT)  # vision catches part 11, the reference passes it
    verdict(vision, 2, c.PASS)  # vision passes part 12, the reference rejects it
    verdict(vision, 3, c.PASS)
    verdict(vision, 4, c.PASS)
    vision[:8] = c.encode_vision_header(c.VisionHeader(2, c.READY | c.REQUEST_SHADOW, 1, prog.epoch))
    prog.scan(0.5, OFFSET + 100, 1e4, True, [])
    snap = c.decode_plc_to_vision(bytes(prog.plc_db))
    assert snap.shadow_mode and snap.product_id == 7
    assert [(d.gate, d.actuated, d.shadow) for d in prog.log] == [
        ("reject_vision", "pass", True), ("pass", "reject", True), ("pass", "pass", True), ("pass", "reject", True)]
    assert snap.rejects_vision == 1 and snap.rejects_failsafe == 0  # vision counted as without shadow
    entries = [snap.decision(seq) for seq in (1, 2, 3, 4)]
    assert [(e.gate, e.vision, e.reference, e.flags) for e in entries if e] == [
        (c.PASS, c.REJECT, c.PASS, c.DECIDED_SHADOW | c.DECIDED_VISION_VALID),
        (c.REJECT, c.PASS, c.REJECT, c.DECIDED_SHADOW | c.DECIDED_VISION_VALID),
        (c.PASS, c.PASS, c.PASS, c.DECIDED_SHADOW | c.DECIDED_VISION_VALID),
        (c.REJECT, c.PASS, c.NO_REFERENCE, c.DECIDED_SHADOW | c.DECIDED_VISION_VALID),
    ]  # fmt: skip


def test_shadow_request_of_another_epoch_is_ignored_and_vision_decides() -> None:
    prog, vision = make()
    vision[:8] = c.encode_vision_header(c.VisionHeader(1, c.READY | c.REQUEST_SHADOW, 1, prog.epoch + 1))
    prog.scan(0.0, 0, 1e4, True, [(1, 0, 0)])
    assert not c.decode_plc_to_vision(bytes(prog.plc_db)).shadow_mode
    ack(prog, vision, 2)
    verdict(vision, 1, c.PASS)
    prog.scan(0.5, OFFSET, 1e4, True, [])
    entry = c.decode_plc_to_vision(bytes(prog.plc_db)).decision(1)
    assert prog.log[0].actuated == "pass" and entry is not None and entry.passed and not entry.shadow
