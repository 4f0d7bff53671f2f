"""Byte layout of the PLC ⇄ vision interface, version 2 (docs/plc-interface.md), both ways.

Version 2 adds to `PlcToVision` the active product and a ring of the gate's decisions (what the
gate did with each part, the existing inspection's verdict for it, whether shadow mode decided):
bytes 0..171 are version 1's, unchanged.

Pure functions over bytes: no I/O, no clock. Every multi-byte value is big-endian as S7 stores it.
Not here: when to read or write (controller/app.py) or the PLC's rules (sim/plc_program.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

INTERFACE_VERSION = 2

PLC_TO_VISION_SIZE = 304
VISION_TO_PLC_SIZE = 520

TRIGGER_RING = 16
TRIGGER_RING_OFFSET = 44
TRIGGER_ENTRY_SIZE = 8

PRODUCT_OFFSET = 172
DECISION_RING = 16
DECISION_RING_OFFSET = 176
DECISION_ENTRY_SIZE = 8

VERDICT_RING = 64
VERDICT_RING_OFFSET = 8
VERDICT_ENTRY_SIZE = 8

PASS = 0xA5
REJECT = 0x5A

# status bits of PlcToVision.status
LINE_RUNNING = 0x01
VISION_ENABLED = 0x02
SHADOW_MODE = 0x04
WATCHDOG_TRIPPED = 0x08

# flags of a decision ring entry
DECIDED_SHADOW = 0x01
"""Shadow mode was on: the gate followed the existing inspection, not the vision verdict."""
DECIDED_VISION_VALID = 0x02
"""A valid verdict of this part's own (ready, no watchdog trip, epoch acknowledged) was in the mailbox."""
DECIDED_FORCED = 0x04
"""The PLC rejected the part whatever the verdicts said (touching parts, a parameter fault)."""

NO_REFERENCE = 0x00
"""Decision ring `reference`: the existing inspection gave no verdict for this part."""

# command bits of VisionToPlc.command
READY = 0x01
REQUEST_SHADOW = 0x02

U32 = 1 << 32

_HEADER = struct.Struct(">HBBIIfIIIIIII")  # PlcToVision bytes 0..43
_ENTRY = struct.Struct(">II")  # trigger ring entry: seq, encoder_pos
_PRODUCT = struct.Struct(">HH")  # product_id, reserved
_DECISION = struct.Struct(">IBBBB")  # seq, gate, vision, reference, flags
_VISION_HEADER = struct.Struct(">HBBI")  # VisionToPlc bytes 0..7
_VERDICT = struct.Struct(">IBBH")  # seq, verdict, defect_class, score
assert _HEADER.size == TRIGGER_RING_OFFSET
assert _VISION_HEADER.size == VERDICT_RING_OFFSET


@dataclass(frozen=True, slots=True)
class PlcToVision:
    life: int
    status: int
    version: int
    epoch: int
    encoder_pos: int
    speed: float
    decision_offset: int
    trigger_seq: int
    decided_seq: int
    rejects_vision: int
    rejects_failsafe: int
    verdicts_late: int
    watchdog_trips: int
    triggers: tuple[tuple[int, int], ...]
    """The raw trigger ring: 16 × (seq, encoder_pos), indexed by slot (seq mod 16)."""
    product_id: int = 0
    """The product the line runs now (the PLC's recipe number); 0 = the PLC does not say."""
    decisions: tuple[DecisionEntry, ...] = ()
    """The raw decision ring: 16 entries indexed by slot (seq mod 16); empty where not decoded."""

    @property
    def line_running(self) -> bool:
        return bool(self.status & LINE_RUNNING)

    @property
    def vision_enabled(self) -> bool:
        return bool(self.status & VISION_ENABLED)

    @property
    def shadow_mode(self) -> bool:
        return bool(self.status & SHADOW_MODE)

    @property
    def watchdog_tripped(self) -> bool:
        return bool(self.status & WATCHDOG_TRIPPED)

    def trigger_pos(self, seq: int) -> int | None:
        """The encoder position latched for `seq`, or None if its ring slot holds another trigger."""
        entry_seq, pos = self.triggers[seq % TRIGGER_RING]
        return pos if entry_seq == seq else None

    def decision(self, seq: int) -> DecisionEntry | None:
        """What the gate did with `seq`, or None if its ring slot holds another part's decision."""
        if not self.decisions:
            return None
        entry = self.decisions[seq % DECISION_RING]
        return entry if entry.seq == seq else None


@dataclass(frozen=True, slots=True)
class DecisionEntry:
    """One part decided at the gate, as the PLC reports it (decision ring of `PlcToVision`)."""

    seq: int
    gate: int
    """What the gate did: PASS (16#A5) or REJECT (16#5A)."""
    vision: int
    """The vision verdict code the PLC read for this part (16#A5, 16#5A, other), 0 if none of its own."""
    reference: int
    """The existing inspection's verdict for this part: PASS, REJECT, or NO_REFERENCE."""
    flags: int
    """DECIDED_SHADOW | DECIDED_VISION_VALID | DECIDED_FORCED."""

    @property
    def passed(self) -> bool:
        return self.gate == PASS

    @property
    def shadow(self) -> bool:
        return bool(self.flags & DECIDED_SHADOW)

    @property
    def vision_valid(self) -> bool:
        return bool(self.flags & DECIDED_VISION_VALID)


def decode_plc_to_vision(data: bytes) -> PlcToVision:
    if len(data) != PLC_TO_VISION_SIZE:
        raise ValueError(f"PlcToVision must be {PLC_TO_VISION_SIZE} bytes, got {len(data)}")
    head = _HEADER.unpack_from(data, 0)
    ring = tuple(
        _ENTRY.unpack_from(data, TRIGGER_RING_OFFSET + i * TRIGGER_ENTRY_SIZE) for i in range(TRIGGER_RING)
    )
    life, status, version, epoch, pos, speed, offset, tseq, dseq, rv, rf, late, trips = head
    product_id, _reserved = _PRODUCT.unpack_from(data, PRODUCT_OFFSET)
    decisions = tuple(
        DecisionEntry(*_DECISION.unpack_from(data, DECISION_RING_OFFSET + i * DECISION_ENTRY_SIZE))
        for i in range(DECISION_RING)
    )
    return PlcToVision(life, status, version, epoch, pos, speed, offset, tseq, dseq, rv, rf, late, trips, ring,
                       product_id, decisions)  # fmt: skip


def encode_plc_to_vision(msg: PlcToVision) -> bytes:
    out = bytearray(PLC_TO_VISION_SIZE)
    _HEADER.pack_into(
        out, 0, msg.life, msg.status, msg.version, msg.epoch, msg.encoder_pos, msg.speed,
        msg.decision_offset, msg.trigger_seq, msg.decided_seq, msg.rejects_vision,
        msg.rejects_failsafe, msg.verdicts_late, msg.watchdog_trips,
    )  # fmt: skip
    for i, (seq, pos) in enumerate(msg.triggers):
        _ENTRY.pack_into(out, TRIGGER_RING_OFFSET + i * TRIGGER_ENTRY_SIZE, seq, pos)
    _PRODUCT.pack_into(out, PRODUCT_OFFSET, msg.product_id, 0)
    for i, d in enumerate(msg.decisions):
        _DECISION.pack_into(out, DECISION_RING_OFFSET + i * DECISION_ENTRY_SIZE, d.seq, d.gate, d.vision,
                            d.reference, d.flags)  # fmt: skip
    return bytes(out)


@dataclass(frozen=True, slots=True)
class VisionHeader:
    life: int
    command: int
    version: int
    epoch_ack: int


def encode_vision_header(h: VisionHeader) -> bytes:
    return _VISION_HEADER.pack(h.life, h.command, h.version, h.epoch_ack)


def decode_vision_header(data: bytes) -> VisionHeader:
    return VisionHeader(*_VISION_HEADER.unpack_from(data, 0))


@dataclass(frozen=True, slots=True)
class VerdictEntry:
    seq: int
    verdict: int
    defect_class: int
    score: int
    """Defect confidence × 10000, 0..10000."""

    @property
    def is_pass(self) -> bool:
        return self.verdict == PASS


def verdict_offset(seq: int) -> int:
    """Byte offset of the verdict ring entry owned by `seq` in VisionToPlc."""
    return VERDICT_RING_OFFSET + (seq % VERDICT_RING) * VERDICT_ENTRY_SIZE


def decision_offset_of(seq: int) -> int:
    """Byte offset of the decision ring entry owned by `seq` in PlcToVision."""
    return DECISION_RING_OFFSET + (seq % DECISION_RING) * DECISION_ENTRY_SIZE


def trigger_offset(seq: int) -> int:
    """Byte offset of the trigger ring entry owned by `seq` in PlcToVision."""
    return TRIGGER_RING_OFFSET + (seq % TRIGGER_RING) * TRIGGER_ENTRY_SIZE


def encode_verdict(v: VerdictEntry) -> bytes:
    return _VERDICT.pack(v.seq, v.verdict, v.defect_class, v.score)


def decode_verdict(data: bytes, offset: int = 0) -> VerdictEntry:
    return VerdictEntry(*_VERDICT.unpack_from(data, offset))


def score_to_word(score: float) -> int:
    """Defect confidence in [0, 1] → UINT ×10000, clamped (NaN counts as certain defect)."""
    if score != score:  # NaN
        return 10000
    return max(0, min(10000, round(score * 10000)))


def check_plc_contract(data: bytes) -> PlcToVision:
    """Decode and validate a first read of PlcToVision; raise ValueError naming what is wrong."""
    if len(data) != PLC_TO_VISION_SIZE:
        raise ValueError(
            f"DB PlcToVision is {len(data)} bytes, the interface needs {PLC_TO_VISION_SIZE}"
        )
    msg = decode_plc_to_vision(data)
    if msg.version != INTERFACE_VERSION:
        raise ValueError(
            f"PLC interface version is {msg.version}, this controller speaks {INTERFACE_VERSION}"
            + (" (load the PLC program of this release: docs/plc-interface.md, migration)" if msg.version == 1 else "")
        )
    return msg
