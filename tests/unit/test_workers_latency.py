"""The pessimistic latency estimate shared by the pools."""

from __future__ import annotations

import math

import pytest

from workers._latency import LatencyWindow


def test_empty_window_knows_nothing() -> None:
    assert LatencyWindow().p95() == math.inf


def test_p95_and_queue_multiplier() -> None:
    w = LatencyWindow(size=100)
    for i in range(100):
        w.add(0.001 * (i + 1))
    assert w.p95() == pytest.approx(0.09505)
    assert w.expected(0) == pytest.approx(w.p95())
    assert w.expected(2) == pytest.approx(3 * w.p95())


def test_window_forgets_old_samples_and_ignores_junk() -> None:
    w = LatencyWindow(size=3)
    for v in (5.0, 5.0, 5.0, 0.01, 0.01, 0.01, math.nan, -1.0, math.inf):
        w.add(v)
    assert len(w) == 3 and w.p95() == pytest.approx(0.01)
