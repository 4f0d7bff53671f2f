"""The judge: scores a simulated run from the outside, by comparing the simulator's ground truth
and gate log with the controller's journal and the frames it stored.

Misassociations are counted exactly: each stored frame carries its part's hidden identity
(sim/identity.py), which must be the part that triggered that sequence number.
Not here: running the line (sim/line.py).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from controller.adapters.journal import alarm_counts, read_image
from controller.core.agreement import Inspected, agreement
from controller.core.plc_codec import PASS, REJECT
from models.synthetic import ALL_CLASSES
from sim.identity import read_stamp

GATE_OF_OUTCOME = {"pass": "pass", "reject": "reject_vision", "failsafe": "reject_failsafe"}


def _key(decision: dict[str, Any]) -> tuple[int, int]:
    return decision["epoch"], decision["seq"]


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def judge(report: dict[str, Any], journal_path: Path) -> dict[str, Any]:
    truth = {p["part_id"]: p["truth"] for p in report["parts"]}
    decisions = report["decisions"]
    # Keys are (epoch, seq): sequence numbers start again at 1 after a PLC restart.
    part_of = {(d["epoch"], d["seq"]): d["part_id"] for d in decisions}
    db = sqlite3.connect(journal_path)
    try:
        rows = {
            (r[0], r[1]): r
            for r in db.execute("SELECT epoch, seq, outcome, reason, frame_counter FROM parts")
        }
        alarms = alarm_counts(db)
        integrity = "; ".join(str(r[0]) for r in db.execute("PRAGMA integrity_check"))
        misassociated, unreadable = 0, 0
        for (ep, seq), _row in rows.items():
            image = read_image(db, ep, seq)
            if image is None:
                continue
            stamped = read_stamp(image)
            expected = part_of.get((ep, seq))
            if stamped is None:
                unreadable += 1
            elif stamped != expected:
                misassociated += 1
    finally:
        db.close()

    gate = Counter(d["gate"] for d in decisions)
    passed = [d for d in decisions if d["actuated"] == "pass"]
    # Without shadow mode a part passes only on its own in-time PASS; in shadow mode only on the
    # existing inspection's PASS (rule 6).
    without_own_pass = sum(1 for d in passed if not d["shadow"] and (
        d["verdict"] != PASS or d["verdict_at"] is None or d["verdict_at"] > d["decided_at"]))  # fmt: skip
    without_reference_pass = sum(1 for d in passed if d["shadow"] and d["reference"] != PASS)
    escapes = [d for d in passed if d["truth"] != 0]
    escapes_model = sum(1 for d in escapes if (rows.get(_key(d)) or (0, 0, "", ""))[3] == "model_pass")
    triggered = {_key(d) for d in decisions}
    recorded = set(rows)
    disagree = sum(
        1 for d in decisions if (r := rows.get(_key(d))) is not None and GATE_OF_OUTCOME[r[2]] != d["gate"]
    )
    failsafe_reasons = Counter(r[3] for r in rows.values() if r[2] == "failsafe")
    latency = [(d["verdict_at"] - d["trigger_at"]) * 1000 for d in decisions if d["verdict_at"] is not None]
    margin = [(d["decided_at"] - d["verdict_at"]) * 1000 for d in decisions if d["verdict_at"] is not None]
    span = (decisions[-1]["decided_at"] - decisions[0]["trigger_at"]) if decisions else 0.0
    trigger_span = (decisions[-1]["trigger_at"] - decisions[0]["trigger_at"]) if len(decisions) > 1 else 0.0

    summary: dict[str, Any] = {
        "parts": len(decisions),
        "parts_defective": sum(1 for d in decisions if d["truth"] != 0),
        "gate": {"pass": gate["pass"], "reject_vision": gate["reject_vision"],
                 "reject_failsafe": gate["reject_failsafe"]},
        "correct_passes": sum(1 for d in passed if d["truth"] == 0),
        "correct_rejects": sum(1 for d in decisions if d["gate"] != "pass" and truth[d["part_id"]] != 0),
        "escapes": {"total": len(escapes), "model_miss": escapes_model, "other": len(escapes) - escapes_model},
        "false_rejects": sum(1 for d in decisions if d["gate"] == "reject_vision" and d["truth"] == 0),
        "vision_by_class": {ALL_CLASSES[c]: {"parts": sum(1 for d in decisions if d["truth"] == c),
                                             "rejected": sum(1 for d in decisions if d["truth"] == c
                                                             and d["gate"] == "reject_vision")}
                            for c in sorted({d["truth"] for d in decisions})},
        "failsafe_by_reason": dict(failsafe_reasons),
        "misassociations": misassociated,
        "frames_without_identity": unreadable,
        "passed_without_own_in_time_pass": without_own_pass,
        "passed_in_shadow_without_reference_pass": without_reference_pass,
        "triggers_without_outcome": len(triggered - recorded),
        "outcomes_without_trigger": len(recorded - triggered),
        "journal_disagrees_with_gate": disagree,
        "deadline_misses": report["plc"]["verdicts_late"] + sum(
            1 for d in decisions if d["verdict_at"] is None
            and (r := rows.get(_key(d))) is not None and r[2] != "failsafe"
        ),
        "latency_ms": {"p50": _pct(latency, 50), "p99": _pct(latency, 99), "max": max(latency, default=0.0)},
        "verdict_margin_ms": {"min": min(margin, default=0.0), "p1": _pct(margin, 1), "p50": _pct(margin, 50)},
        "throughput_parts_per_s": (len(decisions) - 1) / trigger_span if trigger_span > 0 else 0.0,
        "run_s": span,
        "plc": report["plc"],
        "plc_max_scan_ms": report["max_scan_ms"],
        "plc_max_cycle_ms": report.get("max_cycle_ms"),
        "plc_realtime": report.get("plc_realtime"),
        "alarms": alarms,
        "journal_integrity": integrity,
    }
    # Nothing lost: whatever happened, no wrong frame, no pass without its own PASS, one outcome
    # per trigger, the journal agrees with the gate and is sound, every fail-safe has its reason.
    shadowed = [d for d in decisions if d["shadow"]]
    if shadowed:
        summary["shadow"] = shadow_agreement(shadowed)
    summary["nothing_lost"] = (
        misassociated == 0 and without_own_pass == 0 and without_reference_pass == 0
        and summary["triggers_without_outcome"] == 0
        and summary["outcomes_without_trigger"] == 0 and disagree == 0 and integrity == "ok"
        and len(decisions) == len(report["parts"])
        and sum(failsafe_reasons.values()) == summary["gate"]["reject_failsafe"]
    )  # fmt: skip
    # With no fault injected, also no fail-safe reject at all.
    summary["ok"] = summary["nothing_lost"] and summary["gate"]["reject_failsafe"] == 0
    return summary


def shadow_agreement(decisions: list[dict[str, Any]]) -> dict[str, Any]:
    """Vision vs the existing inspection vs the truth over the parts decided in shadow mode, from
    the simulator's own gate log: what `lineinspect report shadow` must find in the journal."""
    reference = {PASS: False, REJECT: True}
    table = agreement(Inspected(vision_reject=d["gate"] != "pass", vision_failsafe=d["gate"] == "reject_failsafe",
                                reference_reject=reference.get(d["reference"]), truth=ALL_CLASSES[d["truth"]])
                      for d in decisions)  # fmt: skip
    return {"overall": table["overall"], "by_class": table["by_class"], "readiness": table["readiness"]}
