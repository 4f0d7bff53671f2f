"""Following the PLC's decision ring (interface version 2): each part decided at the gate is
returned once, in order, with what the gate did — or counted as missed when its entry was
overwritten before a read saw it (the ring holds 16; at 20 parts/s that is 0.8 s of reads lost).

Pure: snapshots in, decisions out. Not here: recording them (controller/app.py, the journal) or
the statistics over them (controller/core/agreement.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.core import plc_codec as c
from controller.core.tracking import wrap_diff


@dataclass(slots=True)
class DecisionFollower:
    epoch: int | None = None
    last_seq: int = 0
    """The newest decided seq already returned (or missed) in `epoch`."""
    missed: int = 0
    """Decisions whose entry was gone before any read saw it, over the follower's life."""
    counts: dict[str, int] = field(default_factory=dict)
    """Running shadow figures over the decisions seen: see `tally`."""

    def on_snapshot(self, snap: c.PlcToVision) -> list[c.DecisionEntry]:
        """The decisions new in this snapshot, oldest first. A new epoch starts where the PLC is:
        decisions made before we first saw the epoch are not ours to report."""
        if snap.epoch != self.epoch:
            self.epoch, self.last_seq = snap.epoch, snap.decided_seq
            return []
        new = wrap_diff(snap.decided_seq, self.last_seq)
        if new <= 0:
            return []
        out: list[c.DecisionEntry] = []
        lost = max(0, new - c.DECISION_RING)
        for k in range(lost + 1, new + 1):  # at most the ring's 16 entries are looked at
            entry = snap.decision((self.last_seq + k) % c.U32)
            if entry is None:
                lost += 1
            else:
                out.append(entry)
        self.missed += lost
        self.last_seq = snap.decided_seq
        for entry in out:
            tally(self.counts, entry)
        return out


def vision_rejects(entry: c.DecisionEntry) -> bool:
    """What the gate would have done on vision's verdict alone: pass only on a valid own PASS."""
    return not (entry.vision_valid and entry.vision == c.PASS)


def tally(counts: dict[str, int], entry: c.DecisionEntry) -> None:
    """Running agreement of vision with the existing inspection (the HMI's shadow figures)."""
    counts["decided"] = counts.get("decided", 0) + 1
    if entry.shadow:
        counts["shadow"] = counts.get("shadow", 0) + 1
    if entry.reference == c.NO_REFERENCE:
        key = "no_reference"
    else:
        vision, reference = vision_rejects(entry), entry.reference != c.PASS
        key = ("both_reject" if reference else "vision_only_reject") if vision else (
            "reference_only_reject" if reference else "both_pass")
    counts[key] = counts.get(key, 0) + 1
