"""The reject gate's own rules in controller/plc/LineInspect.scl, checked on the SCL text.

What the simulator's PLC does not model and the shipped program must still get right: a reject
window per part in encoder counts (merged when windows overlap), the start-up geometry check that
refuses a window that does not fit, touching parts (photo-eye occupied longer than a part) rejected
whole, an object at the gate eye without a FIFO entry rejected by default, and the hardware capture
of the edge position. The geometry check is translated to Python and evaluated (it is plain integer
arithmetic); the rest is checked statement by statement, as TIA Portal is not available here.
Not here: the DB layouts against the codec (test_scl_in_step.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controller.config import DeadlineConfig
from controller.core.tracking import check_line_geometry

SCL = Path(__file__).resolve().parents[2] / "controller" / "plc" / "LineInspect.scl"


def _source() -> str:
    text = SCL.read_text(encoding="utf-8")
    text = re.sub(r"\(\*.*?\*\)", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _fb() -> str:
    m = re.search(r'FUNCTION_BLOCK\s+"LineInspect"(.*?)END_FUNCTION_BLOCK', _source(), re.S)
    assert m, "FUNCTION_BLOCK LineInspect not found"
    return m.group(1)


def _region(title: str) -> str:
    m = re.search(rf"REGION\s+{re.escape(title)}[^\n]*\n(.*?)END_REGION", _fb(), re.S)
    assert m, f"REGION {title!r} not found in LineInspect"
    return m.group(1)


def _has(text: str, pattern: str) -> bool:
    return re.search(pattern, text, re.S | re.I) is not None


def _scl_int(lit: str) -> int:
    return int(lit[3:], 16) if lit.upper().startswith("16#") else int(lit)


def _constants() -> dict[str, int]:
    body = re.search(r"VAR\s+CONSTANT(.*?)END_VAR", _fb(), re.S)
    assert body
    return {
        name: _scl_int(value)
        for name, value in re.findall(r"(\w+)\s*:\s*\w+\s*:=\s*(16#[0-9A-Fa-f]+|\d+)\s*;", body.group(1))
    }


def _input_defaults() -> dict[str, str]:
    body = re.search(r"VAR_INPUT(.*?)END_VAR", _fb(), re.S)
    assert body
    return dict(re.findall(r"(\w+)\s*:\s*\w+\s*:=\s*([^;]+?)\s*;", body.group(1)))


# ------------------------------------------------------------------ the geometry check, evaluated
_PARAMS = {  # FB input -> latched static the check reads
    "decision_offset": "p_decision_offset", "reject_length_counts": "p_reject_length",
    "max_part_length_counts": "p_max_part_length", "min_pitch_counts": "p_min_pitch",
    "gate_eye_fitted": "p_gate_eye", "gate_eye_offset_counts": "p_gate_eye_offset",
    "gate_eye_tolerance_counts": "p_gate_eye_tol", "reference_offset_counts": "p_reference_offset",
    "reference_tolerance_counts": "p_reference_tol",
}  # fmt: skip


def _to_python(cond: str, consts: dict[str, int]) -> str:
    """An SCL condition over #p_* statics and constants as a Python expression (integers only)."""
    expr = re.sub(r"#(p_\w+)", r"p['\1']", " ".join(cond.split()))
    expr = re.sub(r"#([A-Z_]+)\b", lambda m: str(consts[m.group(1)]), expr)
    expr = expr.replace("<>", "!=")
    expr = re.sub(r"(?<![<>:!=])=(?!=)", "==", expr)
    expr = re.sub(r"\bAND\b", " and ", expr)
    expr = re.sub(r"\bOR\b", " or ", expr)
    expr = re.sub(r"\bNOT\b", " not ", expr)
    expr = expr.replace("/", "//")  # UDInt division
    leftover = re.sub(r"p\['p_\w+'\]|\d+|\b(and|or|not)\b|==|!=|<=|>=|//|[<>()+\-*\s]", "", expr)
    assert not leftover, f"the geometry check uses something this test cannot evaluate: {leftover!r} in {cond!r}"
    return expr


def _geometry_check() -> list[tuple[str, str]]:
    """[(python condition, PF_* name)] of the IF/ELSIF chain that sets q_param_fault_code; the
    final ELSE is ("True", "PF_NONE")."""
    start = _region("Rule 5")
    consts = _constants()
    branch = r"\b(?:IF|ELSIF)\b((?:(?!\bTHEN\b).)*)\bTHEN\s+#q_param_fault_code\s*:=\s*#(PF_\w+)\s*;"
    chain = re.findall(branch, start, re.S)
    assert chain, "the start-up geometry check is missing"
    assert _has(start, r"ELSE\s+#q_param_fault_code\s*:=\s*#PF_NONE\s*;"), "no PF_NONE branch"
    return [(_to_python(c, consts), name) for c, name in chain] + [("True", "PF_NONE")]


def scl_param_check(**inputs: int) -> str:
    """What the FB's start-up check answers for these FB inputs (the FB's defaults otherwise)."""
    defaults = _input_defaults()
    p: dict[str, int] = {}
    for fb_input, static in _PARAMS.items():
        raw = defaults[fb_input].upper()
        default = {"TRUE": 1, "FALSE": 0}[raw] if raw in ("TRUE", "FALSE") else _scl_int(raw)
        p[static] = inputs.get(fb_input, default)
    for cond, name in _geometry_check():
        if eval(cond, {"__builtins__": {}}, {"p": p}):  # checked above: integers and operators only
            return name
    raise AssertionError("unreachable: the chain ends in ELSE")


def test_fb_defaults_fit_the_controllers_defaults() -> None:
    assert scl_param_check() == "PF_NONE"
    assert int(_input_defaults()["min_pitch_counts"]) == DeadlineConfig().min_part_pitch_counts


def test_each_fault_code_is_named_and_distinct() -> None:
    codes = {k: v for k, v in _constants().items() if k.startswith("PF_")}
    assert codes["PF_NONE"] == 0
    assert len(set(codes.values())) == len(codes), "two faults share a code"
    assert {name for _, name in _geometry_check()} == set(codes), "a PF_* code the check never gives"


@pytest.mark.parametrize(
    "inputs, fault",
    [
        ({"reject_length_counts": 170, "max_part_length_counts": 180}, "PF_WINDOW_SHORTER_THAN_PART"),
        ({"reject_length_counts": 301, "min_pitch_counts": 300}, "PF_WINDOW_LONGER_THAN_PITCH"),
        ({"reject_length_counts": 300, "max_part_length_counts": 300, "min_pitch_counts": 300},
         "PF_PART_NOT_SHORTER_THAN_PITCH"),
        ({"decision_offset": 180, "max_part_length_counts": 180, "min_pitch_counts": 300},
         "PF_PART_LONGER_THAN_DECISION"),
        ({"decision_offset": 30000, "min_pitch_counts": 300}, "PF_TOO_MANY_IN_FLIGHT"),
        ({"reject_length_counts": 0}, "PF_ZERO_PARAMETER"),
        ({"decision_offset": 0x10000000}, "PF_OUT_OF_RANGE"),
        ({"gate_eye_fitted": 1, "gate_eye_offset_counts": 0}, "PF_ZERO_PARAMETER"),
        ({"gate_eye_fitted": 1, "gate_eye_offset_counts": 2950, "gate_eye_tolerance_counts": 60},
         "PF_GATE_EYE_AFTER_DECISION"),
        ({"gate_eye_fitted": 1, "gate_eye_tolerance_counts": 150}, "PF_GATE_EYE_TOLERANCE_TOO_WIDE"),
        ({"gate_eye_fitted": 1}, "PF_NONE"),
        ({"reference_offset_counts": 2950}, "PF_REFERENCE_AFTER_DECISION"),
        ({"reference_tolerance_counts": 150}, "PF_REFERENCE_TOLERANCE_TOO_WIDE"),
        # the simulator's line: 10 counts/mm, 400 mm to the decision point, smallest pitch 35 mm
        ({"decision_offset": 4000, "min_pitch_counts": 350, "max_part_length_counts": 230,
          "reject_length_counts": 340}, "PF_NONE"),
    ],
)  # fmt: skip
def test_geometry_check_refuses_a_window_that_does_not_fit(inputs: dict[str, int], fault: str) -> None:
    assert scl_param_check(**inputs) == fault


@pytest.mark.parametrize("pitch", [2, 47, 63, 64, 299, 300, 301, 1000])
def test_parts_in_flight_check_agrees_with_the_controller(pitch: int) -> None:
    """The PLC refuses exactly the lines the controller refuses at start-up (ceil(offset / pitch) > 63)."""
    for offset in range(pitch * 60, pitch * 66 + 2, max(1, pitch // 3)):
        try:
            check_line_geometry(offset, pitch)
            controller_refuses = False
        except ValueError:
            controller_refuses = True
        half = pitch // 2  # a part and its window that fit the pitch
        plc = scl_param_check(decision_offset=offset, min_pitch_counts=pitch, max_part_length_counts=half,
                              reject_length_counts=half)  # fmt: skip
        assert (plc == "PF_TOO_MANY_IN_FLIGHT") == controller_refuses, (offset, pitch, plc)


def test_a_parameter_fault_holds_the_gate_and_passes_nothing() -> None:
    fb = _fb()
    assert _has(_region("Rule 5"), r"#param_fault\s*:=\s*#q_param_fault_code\s*<>\s*#PF_NONE\s*;")
    assert _has(fb, r"#valid\s*:=[^;]*\bAND\s+NOT\s+#param_fault\b[^;]*;"), "a PASS is valid despite a fault"
    assert _has(fb, r"#q_reject\s*:=[^;]*\bOR\s+#param_fault\b[^;]*;"), "the gate is not held on a fault"


# ------------------------------------------------------------------ the reject window, in counts
def test_reject_output_is_a_window_in_counts_not_a_time_pulse() -> None:
    fb = _fb()
    timers = re.findall(r"(\w+)\s*:\s*(TP|TON|TOF)\s*;", fb)
    assert sorted(timers) == [("trig_pulse", "TP"), ("wd_timer", "TON")], "a timer drives something new"
    assert not _has(fb, r"reject_pulse"), "the 50 ms reject pulse is back"
    decide = _region("Rule 2")
    assert _has(decide, r"#pos\s*:=\s*#fifo\[#fifo_head\]\.decision_pos\s*;")
    assert _has(decide, r"#win_end\s*:=\s*#pos\s*\+\s*#p_reject_length\s*;"), "window not decision pos + length"
    assert _has(decide, r'"LI_MergeWindow"\(\s*new_end\s*:=\s*#win_end\s*,\s*is_open\s*:=\s*#window_open\s*,'
                        r"\s*end_pos\s*:=\s*#window_end\s*\)")  # fmt: skip
    assert _has(decide, r'IF\s+#window_open\s+AND\s+"LI_Diff"\(\s*a\s*:=\s*#i_encoder\s*,\s*b\s*:=\s*#window_end\s*\)'
                        r"\s*>=\s*0\s+THEN\s+#window_open\s*:=\s*FALSE")  # fmt: skip
    assert _has(decide, r"#q_reject\s*:=\s*#window_open\s+OR\s+#hold\s+OR\s+#reject_now\s+OR\s+#param_fault\s*;")


def test_overlapping_windows_merge_to_the_later_end() -> None:
    m = re.search(r'FUNCTION\s+"LI_MergeWindow"(.*?)END_FUNCTION\b', _source(), re.S)
    assert m, "FUNCTION LI_MergeWindow not found"
    body = m.group(1).split("BEGIN", 1)[1]
    assert _has(body, r'IF\s+NOT\s+#is_open\s+OR\s+"LI_Diff"\(\s*a\s*:=\s*#new_end\s*,\s*b\s*:=\s*#end_pos\s*\)\s*>\s*0'
                      r"\s+THEN\s+#end_pos\s*:=\s*#new_end\s*;\s*END_IF\s*;\s*#is_open\s*:=\s*TRUE\s*;")  # fmt: skip


def test_positions_are_compared_only_through_the_signed_difference() -> None:
    """Encoder counts wrap at 2^32: a raw `<` / `>=` on one is wrong once per wrap."""
    fb = re.sub(r'"LI_Diff"\([^()]*\)', "DIFF", _fb())
    position = r"(?:#i_encoder|#i_eye_capture|#\w*_pos\b|\.\w*_pos\b|#window_end|#win_end|#last_capture)"
    raw = re.findall(rf"{position}\s*(?:<(?!>)|>|<=|>=)|(?<![<:])(?:<|>|<=|>=)\s*{position}", fb)
    assert not raw, f"raw comparison of wrapping positions: {raw}"


# ------------------------------------------------------------------ touching parts and the gate eye
def test_touching_parts_are_detected_by_length_and_rejected_whole() -> None:
    trigger = _region("Rule 1")
    over = re.search(
        r'IF\s+#eye_busy\s+AND\s+#stretch_slot\s*<\s*0\s+AND\s+"LI_Diff"\(\s*a\s*:=\s*#i_encoder\s*,\s*b\s*:=\s*'
        r"#eye_rise_pos\s*\)\s*>\s*UDINT_TO_DINT\(\s*#p_max_part_length\s*\)\s+THEN(.*?)END_IF;\s*$", trigger, re.S
    )  # fmt: skip
    assert over, "no part-length check at the photo-eye"
    body = over.group(1)
    assert _has(body, r"#q_alarm_touching\s*:=\s*TRUE")
    assert _has(body, r"\.force_reject\s*:=\s*TRUE"), "the first part of the stretch may still pass"
    assert _has(body, r"\.start_pos\s*:=\s*#eye_rise_pos\s*\+\s*#p_decision_offset\s*;")
    assert _has(body, r"\.end_known\s*:=\s*FALSE"), "the stretch's window must stay open until the eye clears"
    assert _has(body, r"#reinit_request\s*:=\s*TRUE"), "no fail-safe when the window list is full"
    # the stretch ends at the trailing edge, or at a new leading edge the scan saw without a gap
    assert _has(trigger, r"IF\s+#eye_fall\.Q\s+OR\s+\(\s*#new_part\s+AND\s+#eye_busy\s*\)\s+THEN\s+IF\s+#stretch_slot"
                         r"\s*>=\s*0\s+THEN\s+#forced\[#stretch_slot\]\.end_pos\s*:=\s*#i_encoder\s*\+\s*"
                         r"#p_decision_offset\s*\+\s*#p_reject_length\s*;\s*#forced\[#stretch_slot\]\.end_known"
                         r"\s*:=\s*TRUE")  # fmt: skip
    decide = _region("Rule 2")
    assert _has(decide, r"#force\s*:=\s*#fifo\[#fifo_head\]\.force_reject\s*;")
    assert _has(decide, r"#valid\s*:=[^;]*\bAND\s+NOT\s+#force\b[^;]*;"), "a forced part can still pass"
    assert _has(decide, r"IF\s+#forced\[#i\]\.end_known\s+THEN\s+\"LI_MergeWindow\"\(\s*new_end\s*:=\s*"
                        r"#forced\[#i\]\.end_pos.*?ELSE\s+#hold\s*:=\s*TRUE")  # fmt: skip


def test_an_object_at_the_gate_without_a_fifo_entry_is_rejected() -> None:
    gate = _region("Gate eye")
    m = re.search(r"IF\s+NOT\s+#matched\s+THEN(.*)", gate, re.S)
    assert m, "no branch for an object that no tracked part accounts for"
    branch = m.group(1)
    # the alarm/count may wait until old-epoch objects are gone; the reject window must not
    unconditional = re.sub(r"IF\s+#gate_settled\s+THEN.*?END_IF\s*;", "", branch, count=1, flags=re.S)
    assert _has(unconditional, r"#forced\[#slot\]\.active\s*:=\s*TRUE")
    assert _has(unconditional, r"#forced\[#slot\]\.end_known\s*:=\s*TRUE")
    assert _has(unconditional, r"#pos\s*:=\s*#i_encoder\s*\+\s*\(\s*#p_decision_offset\s*-\s*#p_gate_eye_offset\s*-\s*"
                               r"#p_gate_eye_tol\s*\)")  # fmt: skip
    assert _has(unconditional, r"#forced\[#slot\]\.end_pos\s*:=\s*#pos\s*\+\s*#p_reject_length\s*\+\s*2\s*\*\s*"
                               r"#p_gate_eye_tol")  # fmt: skip
    assert _has(unconditional, r"#reinit_request\s*:=\s*TRUE"), "no fail-safe when the window list is full"
    assert _has(branch, r"#q_gate_unmatched\s*:=\s*#q_gate_unmatched\s*\+\s*1")


def test_decisions_are_counted_against_objects_at_the_gate() -> None:
    gate, decide = _region("Gate eye"), _region("Rule 2")
    assert _has(gate, r"IF\s+#gate_edge\.Q\s+THEN\s+#q_gate_objects\s*:=\s*#q_gate_objects\s*\+\s*1")
    assert _has(gate, r"#fifo\[#slot\]\.seen_at_gate\s*:=\s*TRUE")
    assert _has(decide, r"#q_decisions\s*:=\s*#q_decisions\s*\+\s*1\s*;\s*IF\s+#p_gate_eye\s+AND\s+NOT\s+#seen\s+THEN"
                        r"\s+#q_gate_missing\s*:=\s*#q_gate_missing\s*\+\s*1")  # fmt: skip


def test_new_counters_stay_out_of_the_contract_blocks() -> None:
    """The FB's own counters are its outputs; the DBs keep the contract's members (test_scl_in_step)."""
    outputs = re.search(r"VAR_OUTPUT(.*?)END_VAR", _fb(), re.S)
    assert outputs
    for name in ("q_decisions", "q_gate_objects", "q_gate_unmatched", "q_gate_missing", "q_touching"):
        assert _has(outputs.group(1), rf"\b{name}\s*:\s*UDInt\s*;")
        assert not _has(_fb(), rf'"PlcToVision"\.{name}')


# ------------------------------------------------------------------ hardware edge capture
def test_the_captured_count_is_the_parts_position_and_a_missed_capture_still_tracks() -> None:
    trigger = _region("Rule 1")
    cap = re.search(r"IF\s+#p_use_capture\s+THEN(.*?)END_IF\s*;\s*END_IF\s*;", trigger, re.S)
    assert cap, "no hardware capture branch"
    body = cap.group(1)
    assert _has(body, r"IF\s+#i_eye_capture\s*<>\s*#last_capture\s+THEN.*?#new_part\s*:=\s*TRUE\s*;"
                      r"\s*#edge_pos\s*:=\s*#i_eye_capture\s*;")  # fmt: skip
    assert not _has(body, r"#new_part\s*:=\s*FALSE"), "an edge the HSC missed would get no FIFO entry"
    assert _has(body, r"ELSIF\s+#eye_edge\.Q\s+THEN.*?#q_alarm_capture\s*:=\s*TRUE")
    assert _has(trigger, r"triggers\[#slot\]\.encoder_pos\s*:=\s*#edge_pos\s*;")
    assert _has(trigger, r"\.decision_pos\s*:=\s*#edge_pos\s*\+\s*#p_decision_offset\s*;")
    assert _has(_region("Rule 5"), r"#last_capture\s*:=\s*#i_eye_capture\s*;")
