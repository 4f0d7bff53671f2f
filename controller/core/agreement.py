"""Shadow-mode statistics: vision against the existing inspection (the reference) and, where it is
known, against the truth — overall, per shift and per defect class — and the go-live verdict.

Pure: it takes one `Inspected` per decided part and returns plain dicts, so the report
(controller/shadow_report.py), the HMI's running figures and the simulator's judge count alike.
Not here: reading the journal or drawing plots.

What "vision rejects" means: what the gate would have done on vision's verdict alone — a valid
REJECT, and also no valid verdict at all (the PLC fails safe). Rates come with 95 % Wilson score
intervals, which stay honest at 0 events and at small counts, where a normal interval does not.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Z95 = 1.959963984540054
GOOD = "good"

MIN_DEFECTIVE = 30
"""Go-live needs at least this many parts of known defective truth: fewer cannot bound an escape rate."""
MAX_FAILSAFE = 0.005
"""... and vision without a valid verdict (fail-safe) on at most this share of parts ..."""
FALSE_REJECT_SLACK = 0.01
"""... and vision's false-reject rate (upper 95 % bound) at most the reference's + this (1 point)."""


@dataclass(frozen=True, slots=True)
class Inspected:
    vision_reject: bool
    """The gate would have rejected the part on vision's verdict (a valid REJECT, or fail-safe)."""
    vision_failsafe: bool
    """No valid vision verdict reached the PLC in time (part of `vision_reject`)."""
    reference_reject: bool | None
    """The existing inspection's verdict; None where it gave none."""
    truth: str | None
    """The true class ("good" or a defect's name) where known: the simulator, or a person's label."""
    shift: str = ""


def wilson(k: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n; (0, 1) where n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def rate(k: int, n: int) -> dict[str, float | int]:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else 0.0, "low95": lo, "high95": hi}


def _table(parts: list[Inspected]) -> dict[str, Any]:
    with_ref = [p for p in parts if p.reference_reject is not None]
    both_pass = sum(1 for p in with_ref if not p.vision_reject and not p.reference_reject)
    both_reject = sum(1 for p in with_ref if p.vision_reject and p.reference_reject)
    vision_only = sum(1 for p in with_ref if p.vision_reject and not p.reference_reject)
    reference_only = sum(1 for p in with_ref if not p.vision_reject and p.reference_reject)
    known = [p for p in parts if p.truth is not None]
    defective = [p for p in known if p.truth != GOOD]
    good = [p for p in known if p.truth == GOOD]
    defective_ref = [p for p in defective if p.reference_reject is not None]
    good_ref = [p for p in good if p.reference_reject is not None]
    return {
        "parts": len(parts),
        "with_reference": len(with_ref),
        "no_reference": len(parts) - len(with_ref),
        "both_pass": both_pass,
        "both_reject": both_reject,
        "vision_only_reject": vision_only,
        "reference_only_reject": reference_only,
        "agreement": rate(both_pass + both_reject, len(with_ref)),
        "vision_failsafe": rate(sum(p.vision_failsafe for p in parts), len(parts)),
        "truth_known": len(known),
        "defective": len(defective),
        "good": len(good),
        "vision_escapes": rate(sum(not p.vision_reject for p in defective), len(defective)),
        "vision_false_rejects": rate(sum(p.vision_reject for p in good), len(good)),
        "reference_escapes": rate(sum(not p.reference_reject for p in defective_ref), len(defective_ref)),
        "reference_false_rejects": rate(sum(bool(p.reference_reject) for p in good_ref), len(good_ref)),
    }


def _by_class(parts: list[Inspected]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for cls in sorted({p.truth for p in parts if p.truth is not None and p.truth != GOOD}):
        of = [p for p in parts if p.truth == cls]
        out[cls] = {
            "parts": len(of),
            "vision_caught": sum(p.vision_reject for p in of),
            "reference_caught": sum(bool(p.reference_reject) for p in of),
            "vision_only_caught": sum(p.vision_reject and p.reference_reject is False for p in of),
            "reference_only_caught": sum(not p.vision_reject and bool(p.reference_reject) for p in of),
        }
    return out


def readiness(overall: dict[str, Any]) -> dict[str, Any]:
    """The go-live verdict with each criterion, its numbers and whether it holds."""
    ve, vf = overall["vision_escapes"], overall["vision_false_rejects"]
    re_, rf = overall["reference_escapes"], overall["reference_false_rejects"]
    fs = overall["vision_failsafe"]
    criteria = [
        {"criterion": f"at least {MIN_DEFECTIVE} parts of known defective truth",
         "value": overall["defective"], "holds": overall["defective"] >= MIN_DEFECTIVE},
        {"criterion": "vision's escape rate, upper 95 % bound, below the reference's escape rate",
         "value": f"{ve['high95']:.2%} vs {re_['rate']:.2%}",
         "holds": ve["n"] > 0 and re_["n"] > 0 and ve["high95"] < re_["rate"]},
        {"criterion": "vision's false-reject rate, upper 95 % bound, at most the reference's "
                      f"+ {FALSE_REJECT_SLACK:.0%}",
         "value": f"{vf['high95']:.2%} vs {rf['rate']:.2%}",
         "holds": vf["n"] > 0 and rf["n"] > 0 and vf["high95"] <= rf["rate"] + FALSE_REJECT_SLACK},
        {"criterion": f"vision fail-safe (no valid verdict in time) on at most {MAX_FAILSAFE:.1%} of parts",
         "value": f"{fs['rate']:.2%}", "holds": fs["rate"] <= MAX_FAILSAFE},
    ]  # fmt: skip
    ready = all(bool(c["holds"]) for c in criteria)
    return {"ready": ready, "verdict": "ready to go live" if ready else "not ready", "criteria": criteria}


def agreement(parts: Iterable[Inspected]) -> dict[str, Any]:
    """Overall and per-shift tables, per-class catches, and the readiness verdict."""
    every = list(parts)
    shifts: dict[str, list[Inspected]] = defaultdict(list)
    for p in every:
        shifts[p.shift].append(p)
    overall = _table(every)
    return {
        "overall": overall,
        "shifts": {name: _table(of) for name, of in sorted(shifts.items())},
        "by_class": _by_class(every),
        "readiness": readiness(overall),
    }
