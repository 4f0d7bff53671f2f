"""Alarms: raised once when a fault appears, cleared once when it goes, each transition logged.

Not here: deciding what is a fault (callers do), showing alarms (the HMI reads `active`)."""

from __future__ import annotations

from collections.abc import Callable

import structlog

log = structlog.get_logger("lineinspect.alarms")


class Alarms:
    def __init__(self, on_change: Callable[[str, bool, str], None] | None = None) -> None:
        self._on_change = on_change or (lambda name, raised, detail: None)
        """Called with (name, raised, detail) at every transition: the journal keeps the history."""
        self._active: dict[str, str] = {}
        self.raised_count: dict[str, int] = {}
        self.cleared_count: dict[str, int] = {}

    def set(self, name: str, active: bool, detail: str = "") -> None:
        if active and name not in self._active:
            self._active[name] = detail
            self.raised_count[name] = self.raised_count.get(name, 0) + 1
            log.warning("alarm_raised", alarm=name, detail=detail)
            self._on_change(name, True, detail)
        elif not active and name in self._active:
            del self._active[name]
            self.cleared_count[name] = self.cleared_count.get(name, 0) + 1
            log.info("alarm_cleared", alarm=name)
            self._on_change(name, False, "")

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(sorted(self._active))
