"""The TIA Portal program controller/plc/LineInspect.scl against the contract and plc_codec.

Parses the two DATA_BLOCK declarations, lays them out with the S7 standard-DB (non-optimized)
alignment rules and checks every offset and size against controller/core/plc_codec.py; then checks,
cheaply, that the FB still contains each rule's key statements (sim/plc_program.py is the same
rules in Python and has its own behavioural tests). The gate's own rules (reject window, geometry
check, touching parts, gate eye, edge capture) are checked in test_scl_gate.py.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.core import plc_codec as c

SCL = Path(__file__).resolve().parents[2] / "controller" / "plc" / "LineInspect.scl"

# elementary S7 types: (size, alignment) in a standard DB
_ELEMENTARY = {
    "byte": (1, 1), "usint": (1, 1), "sint": (1, 1), "char": (1, 1),
    "uint": (2, 2), "int": (2, 2), "word": (2, 2),
    "udint": (4, 2), "dint": (4, 2), "dword": (4, 2), "real": (4, 2),
}  # fmt: skip
_STRUCT_CHAR = {"uint": "H", "byte": "B", "udint": "I", "real": "f"}


@dataclass
class Member:
    name: str
    type: str  # elementary type name, or "struct"
    count: int | None = None  # array length; None for a scalar
    children: list[Member] = field(default_factory=list)


def _source() -> str:
    text = SCL.read_text(encoding="utf-8")
    text = re.sub(r"\(\*.*?\*\)", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def parse_data_block(name: str) -> tuple[str, list[Member]]:
    """The header (attributes) and the members of DATA_BLOCK "name"."""
    m = re.search(rf'DATA_BLOCK\s+"{name}"(.*?)\bVAR\b(.*?)\bEND_VAR\b.*?END_DATA_BLOCK', _source(), re.S)
    assert m, f"DATA_BLOCK {name} not found in {SCL}"
    header, body = m.groups()
    stack: list[list[Member]] = [[]]
    decl = re.compile(r"(\w+)\s*:\s*(?:Array\s*\[\s*(\d+)\s*\.\.\s*(\d+)\s*\]\s*of\s+)?(\w+)\s*;?", re.I)
    for raw in body.split("\n"):
        line = raw.strip()
        if not line:
            continue
        if re.fullmatch(r"END_STRUCT\s*;?", line, re.I):
            stack.pop()
            continue
        d = decl.fullmatch(line)
        assert d, f"{name}: cannot parse member line {line!r}"
        mname, lo, hi, typ = d.groups()
        count = int(hi) - int(lo) + 1 if lo is not None else None
        if lo is not None:
            assert lo == "0", f"{name}.{mname}: arrays start at 0 in the contract"
        typ = typ.lower()
        member = Member(mname, typ, count)
        stack[-1].append(member)
        if typ == "struct":
            stack.append(member.children)
        else:
            assert typ in _ELEMENTARY, f"{name}.{mname}: type {typ} is not in the contract (no Bool!)"
    assert len(stack) == 1, f"{name}: unbalanced Struct / END_STRUCT"
    return header, stack[0]


def _even(n: int) -> int:
    return n + (n & 1)


def layout(members: list[Member], base: int = 0, prefix: str = "") -> tuple[int, dict[str, tuple[int, int]]]:
    """Size of the member list as a struct body and {path: (offset, element size)} of every member."""
    offsets: dict[str, tuple[int, int]] = {}
    pos = base
    for m in members:
        if m.type == "struct":
            pos = _even(pos)
            child_size, child = layout(m.children, 0, "")
            elem = _even(child_size)  # structs are padded to an even size
            offsets[prefix + m.name] = (pos, elem)
            for path, (off, size) in child.items():
                offsets[f"{prefix}{m.name}.{path}"] = (pos + off, size)
        else:
            elem, align = _ELEMENTARY[m.type]
            if m.count is not None:
                align = 2  # arrays start at an even offset
            pos = pos + (pos % align)
            offsets[prefix + m.name] = (pos, elem)
        pos += elem * (m.count or 1)
        if m.count is not None:
            pos = _even(pos)
    return pos - base, offsets


def _db(name: str) -> tuple[int, dict[str, tuple[int, int]], list[Member]]:
    _, members = parse_data_block(name)
    size, offsets = layout(members)
    return _even(size), offsets, members


@pytest.mark.parametrize("name", ["PlcToVision", "VisionToPlc"])
def test_data_blocks_are_standard_access(name: str) -> None:
    header, _ = parse_data_block(name)
    assert re.search(r"S7_Optimized_Access\s*:=\s*'FALSE'", header), f"{name} must be non-optimized"


def test_plc_to_vision_layout() -> None:
    size, off, members = _db("PlcToVision")
    assert size == c.PLC_TO_VISION_SIZE == 304
    expected = {
        "life": 0, "status": 2, "version": 3, "epoch": 4, "encoder_pos": 8, "speed": 12,
        "decision_offset": 16, "trigger_seq": 20, "decided_seq": 24, "rejects_vision": 28,
        "rejects_failsafe": 32, "verdicts_late": 36, "watchdog_trips": 40,
        "triggers": c.TRIGGER_RING_OFFSET, "triggers.seq": c.TRIGGER_RING_OFFSET,
        "triggers.encoder_pos": c.TRIGGER_RING_OFFSET + 4,
        "product_id": c.PRODUCT_OFFSET, "reserved": 174,
        "decisions": c.DECISION_RING_OFFSET, "decisions.seq": 176, "decisions.gate": 180,
        "decisions.vision": 181, "decisions.reference": 182, "decisions.flags": 183,
    }  # fmt: skip
    assert {k: v[0] for k, v in off.items()} == expected
    assert off["triggers"][1] == c.TRIGGER_ENTRY_SIZE == 8
    assert off["decisions"][1] == c.DECISION_ENTRY_SIZE == 8
    by_name = {m.name: m for m in members}
    assert by_name["triggers"].count == c.TRIGGER_RING == 16
    assert by_name["decisions"].count == c.DECISION_RING == 16
    # same names, order and types as the codec's decoder ('reserved' is padding the codec skips)
    assert [m.name for m in members if m.name != "reserved"] == [f.name for f in dataclasses.fields(c.PlcToVision)]
    header = members[: [m.name for m in members].index("triggers")]
    assert ">" + "".join(_STRUCT_CHAR[m.type] for m in header) == c._HEADER.format
    assert ">" + "".join(_STRUCT_CHAR[m.type] for m in by_name["triggers"].children) == c._ENTRY.format
    assert ">" + _STRUCT_CHAR[by_name["product_id"].type] + _STRUCT_CHAR[by_name["reserved"].type] == c._PRODUCT.format
    decision = by_name["decisions"].children
    assert [m.name for m in decision] == [f.name for f in dataclasses.fields(c.DecisionEntry)]
    assert ">" + "".join(_STRUCT_CHAR[m.type] for m in decision) == c._DECISION.format


def test_vision_to_plc_layout() -> None:
    size, off, members = _db("VisionToPlc")
    assert size == c.VISION_TO_PLC_SIZE == 520
    expected = {
        "life": 0, "command": 2, "version": 3, "epoch_ack": 4, "verdicts": c.VERDICT_RING_OFFSET,
        "verdicts.seq": 8, "verdicts.verdict": 12, "verdicts.defect_class": 13, "verdicts.score": 14,
    }  # fmt: skip
    assert {k: v[0] for k, v in off.items()} == expected
    assert c.VERDICT_RING_OFFSET == 8
    assert off["verdicts"][1] == c.VERDICT_ENTRY_SIZE == 8
    assert members[-1].count == c.VERDICT_RING == 64
    assert [m.name for m in members[:-1]] == [f.name for f in dataclasses.fields(c.VisionHeader)]
    assert ">" + "".join(_STRUCT_CHAR[m.type] for m in members[:-1]) == c._VISION_HEADER.format
    verdict = [m.name for m in members[-1].children]
    assert verdict == [f.name for f in dataclasses.fields(c.VerdictEntry)]
    assert ">" + "".join(_STRUCT_CHAR[m.type] for m in members[-1].children) == c._VERDICT.format


def _fb() -> str:
    m = re.search(r'FUNCTION_BLOCK\s+"LineInspect"(.*?)END_FUNCTION_BLOCK', _source(), re.S)
    assert m, "FUNCTION_BLOCK LineInspect not found"
    return m.group(1)


def _const(fb: str, name: str) -> str:
    m = re.search(rf"\b{name}\s*:\s*\w+\s*:=\s*([\w#]+)\s*;", fb)
    assert m, f"constant {name} not declared"
    return m.group(1)


def _scl_int(lit: str) -> int:
    return int(lit[3:], 16) if lit.upper().startswith("16#") else int(lit)


def test_fb_constants_match_the_codec() -> None:
    fb = _fb()
    assert _scl_int(_const(fb, "PASS")) == c.PASS == 0xA5
    assert _scl_int(_const(fb, "REJECT")) == c.REJECT == 0x5A
    assert _scl_int(_const(fb, "INTERFACE_VERSION")) == c.INTERFACE_VERSION
    assert _scl_int(_const(fb, "TRIGGER_RING")) == c.TRIGGER_RING
    assert _scl_int(_const(fb, "DECISION_RING")) == c.DECISION_RING
    assert _scl_int(_const(fb, "VERDICT_RING")) == c.VERDICT_RING
    assert _scl_int(_const(fb, "FIFO_SIZE")) == c.VERDICT_RING  # one FIFO slot per verdict slot
    assert re.search(r"fifo\s*:\s*Array\s*\[\s*0\s*\.\.\s*63\s*\]", fb, re.I)


@pytest.mark.parametrize(
    "rule, pattern",
    [
        ("1 trigger edge", r"R_TRIG"),
        ("1 ring pos before seq before trigger_seq",
         r"triggers\[#slot\]\.encoder_pos\s*:=.*?triggers\[#slot\]\.seq\s*:=.*?\.trigger_seq\s*:=\s*#seq"),
        ("1 camera pulse", r"#q_camera_trigger\s*:="),
        ("2 decision at the signed wrap difference",
         r"\"LI_Diff\"\(\s*a\s*:=\s*#i_encoder\s*,\s*b\s*:=\s*#fifo\[#fifo_head\]\.decision_pos\s*\)\s*<\s*0\s+THEN\s+EXIT"),
        ("2 pass conditions",
         r"#ready\s+AND\s+NOT\s+#wd_tripped\s+AND\s+\"VisionToPlc\"\.epoch_ack\s*=\s*\"PlcToVision\"\.epoch\s+AND\s+#own"),
        ("2 pass code", r"#verdict\s*=\s*#PASS"),
        ("2 counts", r"rejects_vision\s*:=.*?rejects_failsafe\s*:="),
        ("2 decided_seq", r"\.decided_seq\s*:=\s*#seq"),
        ("2 vision off: the existing inspection's coil", r"#q_reject\s*:=\s*#i_existing_reject"),
        ("6 shadow: the gate follows the part's reference",
         r"#follow_reference\s*:=\s*#shadow\s+OR.*?IF\s+#follow_reference\s+THEN\s+#reject_part\s*:=\s*#reference\s*<>\s*#PASS"),
        ("6 shadow requested for this epoch only",
         r"#shadow\s*:=\s*#i_shadow\s+OR\s+\(\s*\"VisionToPlc\"\.command\.%X1\s+AND\s+\"VisionToPlc\"\.epoch_ack\s*=\s*\"PlcToVision\"\.epoch\s*\)"),
        ("6 reference latched by position: the part at the existing inspection's station",
         r"#reference_edge\.Q\s+THEN.*?#pos\s*:=\s*#fifo\[#slot\]\.decision_pos\s*-\s*#p_decision_offset\s*\+\s*"
         r"#p_reference_offset.*?#fifo\[#slot\]\.reference\s*=\s*0\s+AND\s+\"LI_Diff\"\(a\s*:=\s*#i_encoder,\s*b\s*:=\s*#pos\)"
         r"\s*>=\s*-UDINT_TO_DINT\(#p_reference_tol\)"),
        ("2 decision entry fields before seq before decided_seq",
         r"decisions\[#slot\]\.gate\s*:=.*?decisions\[#slot\]\.flags\s*:=\s*#flags;\s*\"PlcToVision\"\.decisions\[#slot\]\.seq\s*:=\s*#seq.*?\.decided_seq\s*:=\s*#seq"),
        ("5 decision ring zeroed", r"\.decisions\[#i\]\.seq\s*:=\s*0"),
        ("3 watchdog TON", r"wd_timer\s*:\s*TON"),
        ("3 watchdog trips", r"watchdog_trips\s*:=\s*\"PlcToVision\"\.watchdog_trips\s*\+\s*1"),
        ("4 late once", r"verdicts_late\s*:=\s*\"PlcToVision\"\.verdicts_late\s*\+\s*1"),
        ("5 new epoch", r"\.epoch\s*:=\s*#new_epoch"),
        ("5 trigger_seq reset", r"\.trigger_seq\s*:=\s*0"),
        ("5 fifo cleared", r"#fifo_count\s*:=\s*0"),
        ("life every cycle", r"\.life\s*:=\s*\"PlcToVision\"\.life\s*\+\s*1"),
    ],
)  # fmt: skip
def test_fb_has_each_rule(rule: str, pattern: str) -> None:
    assert re.search(pattern, _fb(), re.S | re.I), f"rule {rule}: {pattern!r} not found in LineInspect"


def test_signed_wrap_difference_is_the_bit_reinterpretation() -> None:
    """LI_Diff, which every position and seq comparison goes through, is a - b reinterpreted as
    DInt (the wrap-safe distance of the contract), not a plain subtraction."""
    m = re.search(r'FUNCTION\s+"LI_Diff"\s*:\s*DInt(.*?)END_FUNCTION\b', _source(), re.S)
    assert m, "FUNCTION LI_Diff not found"
    assert re.search(r"#LI_Diff\s*:=\s*DWORD_TO_DINT\(\s*UDINT_TO_DWORD\(\s*#a\s*-\s*#b\s*\)\s*\)\s*;", m.group(1))
