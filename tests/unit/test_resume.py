"""Resuming after the controller was down: every part decided meanwhile gets its one outcome, and
recorded verdicts the gate treated otherwise are found from the counters since the resume point."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.core.resume import Recorded, another_plc_run, resume
from controller.core.tracking import GateCounters, Outcome

U32 = 2**32
PASS, REJECT, FAILSAFE = Outcome.PASS, Outcome.REJECT, Outcome.FAILSAFE


def gate(decided: int, vision: int = 0, failsafe: int = 0) -> GateCounters:
    return GateCounters(decided % U32, vision, failsafe, 0, watchdog_tripped=False)


def written(seq: int, verdict: Outcome, acked: bool = True) -> Recorded:
    return Recorded(seq, verdict, verdict, acked)


def test_nothing_decided_since_the_resume_point_means_nothing_to_do() -> None:
    out = resume(gate(10), gate(10), [written(11, PASS)])
    assert not out.unrecorded and not out.corrected and not out.inconsistent


def test_parts_decided_while_down_are_recorded_and_a_written_pass_decided_after_the_trip_is_corrected() -> None:
    # Seq 1-3 written and passed; 4 written PASS but decided after the watchdog tripped; 5-8 never seen.
    out = resume(gate(0), gate(8, failsafe=5), [written(s, PASS) for s in (1, 2, 3, 4)])
    assert out.unrecorded == [5, 6, 7, 8]
    assert out.corrected == [(4, FAILSAFE)]
    assert not out.inconsistent


def test_the_last_decided_verdicts_are_the_ones_the_trip_failed() -> None:
    recorded = [written(1, REJECT), written(2, PASS), written(3, REJECT), written(4, REJECT)]
    out = resume(gate(0), gate(4, vision=2, failsafe=1), recorded)
    assert out.corrected == [(4, FAILSAFE)]


def test_a_verdict_still_queued_at_the_kill_is_the_one_that_failed() -> None:
    # Two workers: seq 12's verdict was written and passed; seq 11's was recorded, never written.
    recorded = [written(s, PASS) for s in range(1, 11)] + [written(11, PASS, acked=False), written(12, PASS)]
    out = resume(gate(0), gate(12, failsafe=1), recorded)
    assert out.corrected == [(11, FAILSAFE)]


def test_a_failed_write_that_landed_is_corrected_to_what_the_gate_did() -> None:
    # Seq 10's write timed out (recorded fail-safe) but landed, and the gate passed every part.
    recorded = [written(s, PASS) for s in range(1, 10)] + [Recorded(10, FAILSAFE, PASS, acked=False)]
    assert resume(gate(0), gate(10), recorded).corrected == [(10, PASS)]
    # With one of them failed, the counters cannot tell which: as in Tracker._reconcile, the
    # unacknowledged write is taken to be it, and the records stand.
    assert resume(gate(0), gate(10, failsafe=1), recorded).corrected == []


def test_parts_without_a_written_verdict_only_count_as_fail_safe() -> None:
    recorded = [Recorded(1, FAILSAFE, None), written(2, PASS), Recorded(3, FAILSAFE, None)]
    out = resume(gate(0), gate(3, failsafe=2), recorded)
    assert not out.corrected and not out.unrecorded and not out.inconsistent


def test_works_across_the_sequence_wrap() -> None:
    start = U32 - 2
    out = resume(gate(start), gate(start + 4, failsafe=2), [written((start + i) % U32, PASS) for i in (1, 2)])
    assert out.unrecorded == [1, 2]
    assert not out.corrected


def test_counters_that_do_not_fit_the_journal_are_flagged_not_guessed() -> None:
    # The gate says 3 passed, the journal has only one PASS: another writer, or a lost journal.
    out = resume(gate(0), gate(3), [written(1, PASS)])
    assert out.inconsistent and not out.corrected


@given(
    n=st.integers(1, 150),
    killed_after=st.integers(0, 150),
    seen=st.integers(0, 63),
    verdicts=st.lists(st.sampled_from([PASS, REJECT, None]), min_size=150, max_size=150),
    start=st.integers(0, U32 - 1),
)
def test_finds_exactly_the_parts_the_gate_rejected_while_no_controller_ran(
    n: int, killed_after: int, seen: int, verdicts: list[Outcome | None], start: int
) -> None:  # fmt: skip
    """After the resume point a controller records parts 1..k, decided before it died, and up to 63
    more it recorded a verdict for (written, or about to be) but the PLC had not decided yet.
    The gate acts on a written verdict only up to the kill; everything after fails safe. `resume`
    must name every unrecorded part and every recorded verdict that failed, and nothing else."""
    k = min(killed_after, n)
    recorded_upto = min(n, k + seen)

    def row(s: int) -> Recorded:
        verdict = verdicts[s - 1]
        # Written after the kill's last acknowledged write: maybe never written at all.
        acked = s <= k or s != recorded_upto
        return Recorded((start + s) % U32, verdict or FAILSAFE, verdict, acked)

    recorded = [row(s) for s in range(1, recorded_upto + 1)]
    vision = sum(1 for s in range(1, k + 1) if verdicts[s - 1] is REJECT)
    failsafe = n - k + sum(1 for s in range(1, k + 1) if verdicts[s - 1] is None)
    out = resume(gate(start), gate(start + n, vision, failsafe), recorded)
    assert not out.inconsistent
    assert out.unrecorded == [(start + s) % U32 for s in range(recorded_upto + 1, n + 1)]
    failed = {((start + s) % U32, FAILSAFE) for s in range(k + 1, recorded_upto + 1) if verdicts[s - 1] is not None}
    assert set(out.corrected) == failed


def test_an_epoch_number_that_came_round_again_is_told_apart_from_a_restart() -> None:
    """A restarted controller finds its PLC run's rows: counters grown, ring entries as recorded.
    An earlier PLC run that used the same epoch number fails one of the two."""
    stored = gate(100, vision=7, failsafe=2)
    rows = [Recorded(s, PASS, PASS, trigger_pos=500 * s) for s in range(95, 101)]
    ring = {s: 500 * s for s in range(95, 111)}
    assert another_plc_run(stored, gate(110, vision=8, failsafe=2), ring, rows) is None
    # Counters of a fresh run start again from 0.
    why = another_plc_run(stored, gate(3), {1: 40, 2: 90, 3: 140}, [])
    assert why is not None and "decided_seq is 3, the journal has 100" in why
    # Or it got further than the stored point before we started: its triggers are elsewhere.
    why = another_plc_run(stored, gate(110, vision=9, failsafe=3), {s: 77 * s for s in range(95, 111)}, rows)
    assert why is not None and "trigger 95 latched at 7315, the journal has 47500" in why
    # Records whose position is unknown (0: written on a resume) prove nothing either way.
    unknown = [Recorded(s, FAILSAFE, None, trigger_pos=0) for s in range(95, 101)]
    elsewhere = {s: 77 * s for s in range(95, 111)}
    assert another_plc_run(stored, gate(110, vision=9, failsafe=3), elsewhere, unknown) is None
