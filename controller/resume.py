"""Resuming after the controller was down (killed, crashed, restarted) while the line ran on.

The PLC rejected every part it decided meanwhile: no heartbeat, so its watchdog tripped (rule 3),
and nothing was written for them. A restarted controller must still give each of those triggers its
one recorded outcome, and correct the verdicts its predecessor recorded but the gate then rejected
(written just before the kill, decided after the watchdog tripped). The journal remembers the gate
counters at the first read of each epoch (the baseline); the PLC's counters now say how many parts
since then passed, were rejected on a vision verdict, or failed safe. Sans-I/O.

Not here: reading the journal or the PLC (controller/app.py), the per-read reconciliation of a
running controller (controller/tracking.py `Tracker._reconcile`, whose ordering rule this shares).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.plc_codec import U32, VERDICT_RING
from controller.tracking import GateCounters, Outcome, wrap_diff


@dataclass(frozen=True, slots=True)
class Recorded:
    """A journal row of the epoch, as much as resuming needs."""

    seq: int
    outcome: Outcome
    written: bool
    """Its verdict write was acknowledged by the PLC."""


@dataclass(slots=True)
class Resumed:
    unrecorded: list[int] = field(default_factory=list)
    """Decided while we were down and never recorded: each fails safe, `controller_down`."""
    corrected: list[tuple[int, Outcome]] = field(default_factory=list)
    """(seq, what we recorded) for recorded verdicts the gate rejected fail-safe instead."""
    inconsistent: bool = False
    """The PLC's counters do not fit the journal (another writer, a lost journal, shadow mode)."""


def resume(baseline: GateCounters, now: GateCounters, recorded: list[Recorded]) -> Resumed:
    """What happened to the parts decided since `baseline`, the epoch's first read, up to `now`.

    Parts of the window without a record were never written for: fail-safe. Of the recorded
    verdicts, the counters tell how many acted at the gate; the rest failed safe. Which ones: the
    last written (a watchdog trip fails every part decided after it), unacknowledged writes first.
    Only parts among the last 63 recorded can be among them: no more are ever between trigger and gate.
    """
    out = Resumed()
    n = wrap_diff(now.decided_seq, baseline.decided_seq)
    if n <= 0:
        return out
    in_window = {r.seq: r for r in recorded
                 if wrap_diff(r.seq, baseline.decided_seq) > 0 and wrap_diff(r.seq, now.decided_seq) <= 0}  # fmt: skip
    first = baseline.decided_seq + 1
    out.unrecorded = [s % U32 for s in range(first, first + n) if s % U32 not in in_window]
    # Parts undecided when we went down were triggered after all but the last 63 we recorded.
    newest = max((r.seq for r in recorded), key=lambda s: wrap_diff(s, baseline.decided_seq), default=first)
    oldest_in_flight = (newest - (VERDICT_RING - 1)) % U32
    dv = (now.rejects_vision - baseline.rejects_vision) % U32
    df = (now.rejects_failsafe - baseline.rejects_failsafe) % U32
    acted = {Outcome.PASS: n - dv - df, Outcome.REJECT: dv}
    for verdict, gate_count in acted.items():
        mine = [r for r in in_window.values() if r.outcome is verdict]
        excess = len(mine) - gate_count
        if excess < 0:
            out.inconsistent = True
            continue
        # The order of Tracker._reconcile: acknowledged before unacknowledged, then by decision.
        mine.sort(key=lambda r: (not r.written, wrap_diff(r.seq, baseline.decided_seq)))
        failed = mine[len(mine) - excess:] if excess else []
        if any(wrap_diff(r.seq, oldest_in_flight) < 0 for r in failed):
            out.inconsistent = True  # older than any part that can have been in flight: not ours to guess
            continue
        out.corrected += [(r.seq, r.outcome) for r in failed]
    return out
