"""The S7 byte layout of the interface contract: Hypothesis round-trips and fixed offsets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.core import plc_codec as c

u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)
u8 = st.integers(0, 255)
f32 = st.floats(0, 1e7, width=32)

plc_messages = st.builds(
    c.PlcToVision, life=u16, status=u8, version=u8, epoch=u32, encoder_pos=u32, speed=f32,
    decision_offset=u32, trigger_seq=u32, decided_seq=u32, rejects_vision=u32, rejects_failsafe=u32,
    verdicts_late=u32, watchdog_trips=u32, triggers=st.tuples(*[st.tuples(u32, u32)] * 16), product_id=u16,
    decisions=st.tuples(*[st.builds(c.DecisionEntry, seq=u32, gate=u8, vision=u8, reference=u8, flags=u8)] * 16),
)  # fmt: skip


@given(plc_messages)
def test_plc_to_vision_round_trips(msg: c.PlcToVision) -> None:
    data = c.encode_plc_to_vision(msg)
    assert len(data) == c.PLC_TO_VISION_SIZE
    assert c.decode_plc_to_vision(data) == msg


@given(st.builds(c.VerdictEntry, seq=u32, verdict=u8, defect_class=u8, score=u16))
def test_verdict_round_trips(v: c.VerdictEntry) -> None:
    assert c.decode_verdict(c.encode_verdict(v)) == v
    assert len(c.encode_verdict(v)) == c.VERDICT_ENTRY_SIZE


@given(st.builds(c.VisionHeader, life=u16, command=u8, version=u8, epoch_ack=u32))
def test_vision_header_round_trips(h: c.VisionHeader) -> None:
    assert c.decode_vision_header(c.encode_vision_header(h)) == h


@given(u32)
def test_ring_offsets_follow_the_contract(seq: int) -> None:
    assert c.verdict_offset(seq) == 8 + (seq % 64) * 8
    assert c.trigger_offset(seq) == 44 + (seq % 16) * 8
    assert c.verdict_offset(seq) + 8 <= c.VISION_TO_PLC_SIZE
    assert c.trigger_offset(seq) + 8 <= c.PLC_TO_VISION_SIZE
    assert c.decision_offset_of(seq) == 176 + (seq % 16) * 8
    assert c.decision_offset_of(seq) + 8 == 184 + (seq % 16) * 8 <= c.PLC_TO_VISION_SIZE == 304


def test_fields_sit_at_the_contract_offsets_big_endian() -> None:
    data = bytearray(c.PLC_TO_VISION_SIZE)
    struct.pack_into(">H", data, 0, 0x1234)
    data[2], data[3] = 0b1011, 1
    struct.pack_into(">I", data, 4, 77)
    struct.pack_into(">f", data, 12, 2.5)
    struct.pack_into(">I", data, 20, 9)
    struct.pack_into(">II", data, 44 + 9 % 16 * 8, 9, 4242)
    struct.pack_into(">H", data, 172, 3)  # product_id
    struct.pack_into(">IBBBB", data, 176 + 7 % 16 * 8, 7, c.REJECT, c.PASS, c.REJECT, c.DECIDED_SHADOW)
    msg = c.decode_plc_to_vision(bytes(data))
    assert msg.product_id == 3
    decided = msg.decision(7)
    assert decided is not None and not decided.passed and decided.shadow and decided.reference == c.REJECT
    assert msg.decision(23) is None  # same slot, another sequence number
    assert (msg.life, msg.epoch, msg.speed, msg.trigger_seq) == (0x1234, 77, 2.5, 9)
    assert msg.line_running and msg.vision_enabled and not msg.shadow_mode and msg.watchdog_tripped
    assert msg.trigger_pos(9) == 4242
    assert msg.trigger_pos(25) is None  # same slot, another sequence number


def test_verdict_codes_are_not_zero_or_one() -> None:
    zeroed = c.decode_verdict(bytes(8))
    assert not zeroed.is_pass
    assert c.decode_verdict(c.encode_verdict(c.VerdictEntry(1, c.PASS, 0, 0))).is_pass


@pytest.mark.parametrize(("score", "word"), [(0.0, 0), (1.0, 10000), (0.12345, 1234), (-1, 0), (7, 10000),
                                             (float("nan"), 10000)])  # fmt: skip
def test_score_is_clamped_to_the_uint_range(score: float, word: int) -> None:
    assert c.score_to_word(score) == word


def test_contract_check_names_size_and_version() -> None:
    with pytest.raises(ValueError, match="171 bytes"):
        c.check_plc_contract(bytes(171))
    with pytest.raises(ValueError, match="version is 0"):
        c.check_plc_contract(bytes(304))
    v1 = bytearray(304)
    v1[3] = 1
    with pytest.raises(ValueError, match=r"version is 1, this controller speaks 2 \(load the PLC program"):
        c.check_plc_contract(bytes(v1))
