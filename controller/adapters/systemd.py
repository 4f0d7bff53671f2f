"""systemd's service notification protocol (sd_notify), without a library: datagrams of
`KEY=value` lines to the socket named by `$NOTIFY_SOCKET`.

With `Type=notify` the service is "started" only once the controller says READY=1 (connected,
models loaded); with `WatchdogSec=` systemd restarts a controller that stops saying WATCHDOG=1
(its event loop hung), which the PLC's own watchdog has already made fail safe. Outside systemd
(`$NOTIFY_SOCKET` unset) every call does nothing.

Not here: the unit file (deploy/lineinspect.service).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

import structlog

log = structlog.get_logger("lineinspect.systemd")


class SystemdNotifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + path[1:] if path.startswith("@") else path  # '@': Linux abstract namespace
        usec = env.get("WATCHDOG_USEC", "")
        watchdog_s = int(usec) / 1e6 if usec.isdigit() else None
        self.ping_every_s = watchdog_s / 4 if watchdog_s else None
        """Ping this often (a quarter of systemd's timeout); None: no watchdog asked for."""
        self._last_ping = 0.0
        self._failing = False
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, **fields: str) -> None:
        """Send `KEY=value` lines; never raises and never blocks (a full socket drops the message)."""
        if self._socket is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            self._socket.sendto(message, self._address)
        except OSError as exc:
            if not self._failing:  # the first failure, and the recovery; not every ping in between
                log.warning("systemd_notify_failed", error=str(exc))
            self._failing = True
            return
        if self._failing:
            self._failing = False
            log.info("systemd_notify_recovered")

    def ready(self, status: str) -> None:
        self.notify(READY="1", STATUS=status, MAINPID=str(os.getpid()))

    def watchdog(self) -> None:
        """Call often (each status cycle): pings at most every `ping_every_s`."""
        if self.ping_every_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.ping_every_s:
            self._last_ping = now
            self.notify(WATCHDOG="1")

    def stopping(self) -> None:
        self.notify(STOPPING="1")

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None
