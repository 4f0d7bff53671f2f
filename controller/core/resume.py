"""Resuming after the controller was down (killed, crashed, restarted) while the line ran on.

The PLC rejected every part it decided meanwhile: no heartbeat, so its watchdog tripped (rule 3),
and nothing was written for them. A restarted controller must still give each of those triggers its
one recorded outcome, and correct the verdicts its predecessor recorded but the gate then rejected
(written just before the kill, decided after the watchdog tripped), or passed after all (a write
that timed out yet landed). The journal stores, with every record, the resume point: the gate
counters up to which the journal agrees with the gate. The PLC's counters now say how many parts
decided since then passed, were rejected on a vision verdict, or failed safe. Sans-I/O.

Not here: reading the journal or the PLC (controller/app.py), the per-read reconciliation of a
running controller (controller/core/tracking.py `Tracker._reconcile`, whose rule this shares).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.core.plc_codec import U32
from controller.core.tracking import GateCounters, Outcome, wrap_diff


@dataclass(frozen=True, slots=True)
class Recorded:
    """A journal row, as much as resuming needs."""

    seq: int
    outcome: Outcome
    written: Outcome | None
    """The verdict written (or about to be) for it: PASS or REJECT; None if nothing was."""
    acked: bool = True
    """The PLC acknowledged that write (False: not written yet, failed, or timed out)."""
    trigger_pos: int = 0
    """The encoder position latched at its trigger (0: not known)."""


@dataclass(slots=True)
class Resumed:
    unrecorded: list[int] = field(default_factory=list)
    """Decided while we were down and never recorded: each fails safe, `controller_down`."""
    corrected: list[tuple[int, Outcome]] = field(default_factory=list)
    """(seq, what the gate did) for recorded parts whose gate outcome differs from the record."""
    inconsistent: bool = False
    """The PLC's counters do not fit the journal (another writer, a lost journal, shadow mode)."""


def resume(since: GateCounters, now: GateCounters, recorded: list[Recorded]) -> Resumed:
    """What the gate did with the parts decided after the resume point `since`, up to `now`.

    Parts without a record were never written for: fail-safe. Of the parts with a written verdict,
    the counters tell how many of each kind acted at the gate; the rest failed safe. Which ones, as
    in Tracker._reconcile: unacknowledged writes first (one still queued when the controller died
    was never written), then the last decided (the watchdog trip after the controller went down
    fails every part decided after it).
    """
    out = Resumed()
    n = wrap_diff(now.decided_seq, since.decided_seq)
    if n <= 0:
        return out
    in_window = {r.seq: r for r in recorded
                 if wrap_diff(r.seq, since.decided_seq) > 0 and wrap_diff(r.seq, now.decided_seq) <= 0}  # fmt: skip
    first = since.decided_seq + 1
    out.unrecorded = [s % U32 for s in range(first, first + n) if s % U32 not in in_window]
    dv = (now.rejects_vision - since.rejects_vision) % U32
    df = (now.rejects_failsafe - since.rejects_failsafe) % U32
    for verdict, acted in ((Outcome.PASS, n - dv - df), (Outcome.REJECT, dv)):
        mine = sorted((r for r in in_window.values() if r.written is verdict),
                      key=lambda r: (not r.acked, wrap_diff(r.seq, since.decided_seq)))  # fmt: skip
        if not 0 <= acted <= len(mine):
            out.inconsistent = True
            continue
        for i, r in enumerate(mine):
            gate = verdict if i < acted else Outcome.FAILSAFE
            if gate is not r.outcome:
                out.corrected.append((r.seq, gate))
    return out


def another_plc_run(stored: GateCounters, now: GateCounters, ring: dict[int, int],
                    recorded: list[Recorded]) -> str | None:  # fmt: skip
    """Why the journal's rows of this epoch cannot be this PLC run's (its epoch number came round
    again), or None. Within one run the gate counters only grow, and the trigger ring's entries
    (seq → latched position) are the ones recorded for those sequence numbers."""
    for name in ("decided_seq", "rejects_vision", "rejects_failsafe", "watchdog_trips"):
        if wrap_diff(getattr(now, name), getattr(stored, name)) < 0:
            return f"the PLC's {name} is {getattr(now, name)}, the journal has {getattr(stored, name)}"
    for r in recorded:
        if r.trigger_pos and r.seq in ring and ring[r.seq] != r.trigger_pos:
            return f"trigger {r.seq} latched at {ring[r.seq]}, the journal has {r.trigger_pos}"
    return None
