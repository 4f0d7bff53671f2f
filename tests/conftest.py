"""Test hygiene by fixtures, not vigilance: leaked threads fail the test; Hypothesis profiles."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Threads that live as long as the process by design, and only those: Ray's driver threads
# ("ray_print_logs", "ray_listen_error_messages", ...) and gRPC's, started by the first ray.init
# of the test session and shared by every later test. Nothing else is exempt: an unnamed thread
# ("Thread-N"), a ThreadPoolExecutor's worker ("ThreadPoolExecutor-N_M", or its prefix such as
# "journal", "infer") or the event loop's default executor ("asyncio_N", shut down with the
# test's loop) still alive after a test belongs to something the test left open.
_PROCESS_LIFETIME = ("ray_", "grpc")


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [t for t in threading.enumerate()
                  if t.ident not in before and t.is_alive() and not t.name.startswith(_PROCESS_LIFETIME)]  # fmt: skip
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"
