"""Resuming after the controller was down: every part decided meanwhile gets its one outcome, and
the verdicts written just before the kill that the gate then rejected are found from the counters."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.resume import Recorded, resume
from controller.tracking import GateCounters, Outcome

U32 = 2**32


def gate(decided: int, vision: int = 0, failsafe: int = 0) -> GateCounters:
    return GateCounters(decided % U32, vision, failsafe, 0, watchdog_tripped=False)


def test_nothing_decided_since_the_first_read_means_nothing_to_do() -> None:
    out = resume(gate(10), gate(10), [Recorded(11, Outcome.PASS, True)])
    assert not out.unrecorded and not out.corrected and not out.inconsistent


def test_parts_decided_while_down_are_recorded_and_a_written_pass_decided_after_the_trip_is_corrected() -> None:
    # Seq 1-3 written and passed; 4 written PASS but decided after the watchdog tripped; 5-8 never seen.
    recorded = [Recorded(s, Outcome.PASS, True) for s in (1, 2, 3, 4)]
    out = resume(gate(0), gate(8, failsafe=5), recorded)
    assert out.unrecorded == [5, 6, 7, 8]
    assert out.corrected == [(4, Outcome.PASS)]
    assert not out.inconsistent


def test_an_unacknowledged_write_is_the_one_that_failed() -> None:
    recorded = [Recorded(s, Outcome.REJECT, written) for s, written in ((1, True), (2, False), (3, True))]
    out = resume(gate(0), gate(3, vision=2, failsafe=1), recorded)
    assert out.corrected == [(2, Outcome.REJECT)]


def test_works_across_the_sequence_wrap() -> None:
    start = U32 - 2
    recorded = [Recorded((start + i) % U32, Outcome.PASS, True) for i in (1, 2)]
    out = resume(gate(start), gate(start + 4, failsafe=2), recorded)
    assert out.unrecorded == [1, 2]
    assert not out.corrected


def test_counters_that_do_not_fit_the_journal_are_flagged_not_guessed() -> None:
    # The gate says 3 passed, the journal has only one PASS: another writer, or a lost journal.
    out = resume(gate(0), gate(3), [Recorded(1, Outcome.PASS, True)])
    assert out.inconsistent and not out.corrected
    # A correction reaching further back than any part can have been in flight is refused too.
    recorded = [Recorded(s, Outcome.PASS, True) for s in range(1, 201)]
    out = resume(gate(0), gate(200, failsafe=100), recorded)
    assert out.inconsistent and not out.corrected


@given(
    n=st.integers(1, 150),
    killed_after=st.integers(0, 150),
    seen=st.integers(0, 63),
    verdicts=st.lists(st.sampled_from([Outcome.PASS, Outcome.REJECT, Outcome.FAILSAFE]), min_size=150, max_size=150),
    start=st.integers(0, U32 - 1),
)
def test_finds_exactly_the_parts_the_gate_rejected_while_no_controller_ran(
    n: int, killed_after: int, seen: int, verdicts: list[Outcome], start: int
) -> None:  # fmt: skip
    """A controller records parts 1..k (+ up to 63 in flight that it recorded but the PLC had not
    decided when it died); the gate acts on a recorded verdict only up to the kill; everything after
    fails safe. `resume` must name every unrecorded part and every recorded verdict that failed."""
    k = min(killed_after, n)
    recorded_upto = min(n, k + seen)
    recorded = [Recorded((start + s) % U32, verdicts[s - 1], True) for s in range(1, recorded_upto + 1)]
    vision = sum(1 for s in range(1, k + 1) if verdicts[s - 1] is Outcome.REJECT)
    failsafe = n - k + sum(1 for s in range(1, k + 1) if verdicts[s - 1] is Outcome.FAILSAFE)
    out = resume(gate(start), gate(start + n, vision, failsafe), recorded)
    assert not out.inconsistent
    assert out.unrecorded == [(start + s) % U32 for s in range(recorded_upto + 1, n + 1)]
    failed = {((start + s) % U32, verdicts[s - 1]) for s in range(k + 1, recorded_upto + 1)
              if verdicts[s - 1] is not Outcome.FAILSAFE}  # fmt: skip
    assert set(out.corrected) == failed
