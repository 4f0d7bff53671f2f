"""sd_notify against a real datagram socket, as systemd listens: READY, STATUS, WATCHDOG at the
rate systemd asked for, STOPPING; nothing at all outside systemd."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from controller.adapters.systemd import SystemdNotifier


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(f"\0lineinspect-test-{os.getpid()}")
    sock.settimeout(2)
    yield sock
    sock.close()


def _received(sock: socket.socket) -> list[str]:
    sock.settimeout(0.2)
    lines = []
    try:
        while True:
            lines += sock.recv(4096).decode().splitlines()
    except TimeoutError:
        return lines


def test_ready_watchdog_and_stopping_reach_systemd(listener: socket.socket) -> None:
    address = "@" + listener.getsockname()[1:].decode()
    notifier = SystemdNotifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})  # 0.4 s
    assert notifier.ping_every_s == pytest.approx(0.1)
    notifier.ready("inspecting")
    started = time.monotonic()
    while time.monotonic() - started < 0.35:
        notifier.watchdog()  # called every status cycle: rate-limited here
        time.sleep(0.01)
    notifier.stopping()
    notifier.close()
    lines = _received(listener)
    assert lines[:3] == ["READY=1", "STATUS=inspecting", f"MAINPID={os.getpid()}"]
    assert 3 <= lines.count("WATCHDOG=1") <= 5
    assert lines[-1] == "STOPPING=1"


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled and notifier.ping_every_s is None
    notifier.ready("x")
    notifier.watchdog()
    notifier.stopping()
