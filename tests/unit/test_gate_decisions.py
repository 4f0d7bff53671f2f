"""Following the PLC's decision ring, and the shadow-mode statistics over it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.core import plc_codec as c
from controller.core.agreement import Inspected, agreement, wilson
from controller.core.gate_decisions import DecisionFollower, tally


def snapshot(epoch: int, decided: int, ring: dict[int, c.DecisionEntry]) -> c.PlcToVision:
    slots = [c.DecisionEntry(0, 0, 0, 0, 0)] * c.DECISION_RING
    for seq, entry in ring.items():
        slots[seq % c.DECISION_RING] = entry
    return c.PlcToVision(1, 3, c.INTERFACE_VERSION, epoch, 0, 0.0, 100, decided, decided, 0, 0, 0, 0,
                         ((0, 0),) * 16, 0, tuple(slots))  # fmt: skip


def entry(seq: int, gate: int = c.PASS, vision: int = c.PASS, reference: int = c.PASS) -> c.DecisionEntry:
    return c.DecisionEntry(seq, gate, vision, reference, c.DECIDED_VISION_VALID)


@given(st.lists(st.integers(0, 40), min_size=1, max_size=30))
def test_each_decision_is_returned_once_or_counted_missed(steps: list[int]) -> None:
    """Whatever the reads' spacing: every decided seq after the first read is either returned
    exactly once, in order, or counted as missed (only when more than the ring's 16 came at once)."""
    follower = DecisionFollower()
    follower.on_snapshot(snapshot(5, 0, {}))
    decided, seen = 0, []
    for step in steps:
        decided += step
        ring = {s: entry(s) for s in range(max(1, decided - 15), decided + 1)}
        seen += [d.seq for d in follower.on_snapshot(snapshot(5, decided, ring))]
    assert seen == sorted(set(seen))
    assert len(seen) + follower.missed == decided
    assert follower.missed == sum(max(0, s - 16) for s in steps)


def test_overwritten_entry_is_missed_and_a_new_epoch_starts_where_the_plc_is() -> None:
    follower = DecisionFollower()
    assert follower.on_snapshot(snapshot(5, 3, {})) == []  # decided before we looked: not ours
    got = follower.on_snapshot(snapshot(5, 5, {4: entry(4), 5: entry(5 + 16)}))
    assert [d.seq for d in got] == [4] and follower.missed == 1
    assert follower.on_snapshot(snapshot(9, 2, {})) == []
    assert [d.seq for d in follower.on_snapshot(snapshot(9, 3, {3: entry(3)}))] == [3]


def test_tally_counts_vision_against_the_reference() -> None:
    counts: dict[str, int] = {}
    for e in [entry(1), entry(2, vision=c.REJECT), entry(3, reference=c.REJECT),
              entry(4, vision=c.REJECT, reference=c.REJECT), entry(5, reference=c.NO_REFERENCE),
              c.DecisionEntry(6, c.REJECT, c.PASS, c.PASS, 0)]:  # fmt: skip  # PASS not valid: fail-safe
        tally(counts, e)
    assert counts == {"decided": 6, "both_pass": 1, "vision_only_reject": 2, "reference_only_reject": 1,
                      "both_reject": 1, "no_reference": 1}  # fmt: skip


def test_wilson_interval_is_honest_at_zero_and_contains_the_rate() -> None:
    lo, hi = wilson(0, 100)
    assert lo == 0.0 and 0.03 < hi < 0.04  # the "rule of three" region
    lo, hi = wilson(8, 100)
    assert lo < 0.08 < hi
    assert wilson(0, 0) == (0.0, 1.0)


def test_agreement_tables_and_readiness() -> None:
    parts = (
        [Inspected(True, False, True, "scratch", "A")] * 60  # both catch
        + [Inspected(True, False, False, "spot", "A")] * 6  # reference escapes, vision catches
        + [Inspected(False, False, False, "good", "B")] * 900
        + [Inspected(True, False, True, "good", "B")] * 4  # reference false rejects
        + [Inspected(True, False, False, "good", "B")] * 2  # vision false rejects
    )
    report = agreement(parts)
    overall = report["overall"]
    assert overall["vision_escapes"]["k"] == 0 and overall["reference_escapes"]["k"] == 6
    assert overall["vision_false_rejects"]["k"] == 6 and overall["reference_false_rejects"]["k"] == 4
    assert (overall["both_reject"], overall["vision_only_reject"], overall["reference_only_reject"]) == (64, 8, 0)
    assert set(report["shifts"]) == {"A", "B"} and report["shifts"]["A"]["parts"] == 66
    assert report["by_class"]["spot"]["vision_only_caught"] == 6
    assert report["readiness"]["ready"], report["readiness"]
    worse = parts + [Inspected(False, False, True, "scratch", "A")] * 10  # vision now misses 10 the reference caught
    assert not agreement(worse)["readiness"]["ready"]


@pytest.mark.parametrize("defective", [0, 29])
def test_too_little_evidence_is_not_ready(defective: int) -> None:
    parts = [Inspected(True, False, False, "scratch")] * defective + [Inspected(False, False, False, "good")] * 500
    assert not agreement(parts)["readiness"]["ready"]
