"""Alarms: raised once when a fault appears, cleared once when it goes, each transition logged, and
latched for the operator until acknowledged and confirmed (OPC UA Part 9's condition model).

A fault that came and went within one status cycle is still shown: its alarm stays (inactive,
unacknowledged) until an operator acknowledges it. `conditions` is the whole latched state, so a
panel (or an HMI process restarted after a crash) learns everything from one snapshot.

Not here: deciding what is a fault (callers do), showing alarms (the HMI renders `conditions`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum

import structlog

log = structlog.get_logger("lineinspect.alarms")


class Severity(StrEnum):
    """The Machine Vision companion spec's three levels (OPC 40100-1), with OPC UA severities."""

    WARNING = "Warning"
    ERROR = "Error"
    PERSISTENT_ERROR = "PersistentError"

    @property
    def opcua(self) -> int:
        return {"Warning": 500, "Error": 800, "PersistentError": 900}[self.value]


SEVERITY: dict[str, Severity] = {
    "journal_stalled": Severity.WARNING,
    "plc_epoch_reused": Severity.WARNING,
    "trigger_ring_overrun": Severity.WARNING,
    "drift": Severity.WARNING,
    "inference": Severity.ERROR,
    "plc_link": Severity.ERROR,
    "camera": Severity.ERROR,
    "plc_watchdog": Severity.ERROR,
    "journal": Severity.PERSISTENT_ERROR,
}
"""A fault the line rides out is a warning; one that makes the PLC reject is an error; one that
needs a person (a corrupt or failed journal) is persistent. Unlisted alarms are errors."""


@dataclass(frozen=True, slots=True)
class Condition:
    """One alarm as a panel sees it."""

    name: str
    severity: Severity
    active: bool
    acked: bool
    confirmed: bool
    raised: int
    """How many times it has been raised (a panel that missed a raise-and-clear sees this move)."""
    detail: str
    changed_utc: str
    """When it last changed state (raised, cleared, acknowledged, confirmed), ISO 8601 UTC."""
    by: str = ""
    """Who acknowledged or confirmed it last."""

    @property
    def retained(self) -> bool:
        """Shown until it is over and a person has acknowledged and confirmed it."""
        return self.active or not self.acked or not self.confirmed


class AlarmError(Exception):
    """An acknowledge or confirm that does not apply (unknown alarm, wrong state)."""


class Alarms:
    def __init__(self, on_change: Callable[[str, bool, str], None] | None = None) -> None:
        self._on_change = on_change or (lambda name, raised, detail: None)
        """Called with (name, raised, detail) at every transition: the journal keeps the history."""
        self._conditions: dict[str, Condition] = {}
        self.raised_count: dict[str, int] = {}
        self.cleared_count: dict[str, int] = {}

    def set(self, name: str, active: bool, detail: str = "") -> None:
        old = self._conditions.get(name)
        if active and (old is None or not old.active):
            self.raised_count[name] = self.raised_count.get(name, 0) + 1
            self._conditions[name] = Condition(
                name, SEVERITY.get(name, Severity.ERROR), active=True, acked=False, confirmed=False,
                raised=self.raised_count[name], detail=detail, changed_utc=_now(),
            )  # fmt: skip
            log.warning("alarm_raised", alarm=name, detail=detail)
            self._on_change(name, True, detail)
        elif not active and old is not None and old.active:
            self.cleared_count[name] = self.cleared_count.get(name, 0) + 1
            self._update(replace(old, active=False, changed_utc=_now()))
            log.info("alarm_cleared", alarm=name)
            self._on_change(name, False, "")

    def acknowledge(self, name: str, by: str) -> None:
        old = self._get(name)
        if old.acked:
            raise AlarmError(f"alarm {name} is already acknowledged")
        self._update(replace(old, acked=True, changed_utc=_now(), by=by))

    def confirm(self, name: str, by: str) -> None:
        old = self._get(name)
        if not old.acked:
            raise AlarmError(f"alarm {name} must be acknowledged before it is confirmed")
        if old.confirmed:
            raise AlarmError(f"alarm {name} is already confirmed")
        self._update(replace(old, confirmed=True, changed_utc=_now(), by=by))

    def _get(self, name: str) -> Condition:
        condition = self._conditions.get(name)
        if condition is None:
            raise AlarmError(f"no alarm {name!r} to act on")
        return condition

    def _update(self, condition: Condition) -> None:
        if condition.retained:
            self._conditions[condition.name] = condition
        else:
            del self._conditions[condition.name]

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(sorted(name for name, c in self._conditions.items() if c.active))

    @property
    def conditions(self) -> tuple[Condition, ...]:
        """Every alarm a person still has to see: active, or not yet acknowledged and confirmed."""
        return tuple(self._conditions[name] for name in sorted(self._conditions))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
