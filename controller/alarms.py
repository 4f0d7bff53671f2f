"""Alarms: raised once when a fault appears, cleared once when it goes, each transition logged.

Not here: deciding what is a fault (callers do), showing alarms (the HMI reads `active`)."""

from __future__ import annotations

import structlog

log = structlog.get_logger("lineinspect.alarms")


class Alarms:
    def __init__(self) -> None:
        self._active: dict[str, str] = {}
        self.raised_count: dict[str, int] = {}
        self.cleared_count: dict[str, int] = {}

    def set(self, name: str, active: bool, detail: str = "") -> None:
        if active and name not in self._active:
            self._active[name] = detail
            self.raised_count[name] = self.raised_count.get(name, 0) + 1
            log.warning("alarm_raised", alarm=name, detail=detail)
        elif not active and name in self._active:
            del self._active[name]
            self.cleared_count[name] = self.cleared_count.get(name, 0) + 1
            log.info("alarm_cleared", alarm=name)

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(sorted(self._active))
