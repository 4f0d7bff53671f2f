"""The verdict path's learnt time budget (pure)."""

from __future__ import annotations

from controller.core.budget import MAX_WAIT_S, VerdictBudget


def test_the_write_margin_follows_the_slowest_writes_but_never_drops_below_the_configured_one() -> None:
    b = VerdictBudget(base_write_s=0.010)
    assert b.write_s == 0.010
    for _ in range(99):
        b.learn_write(0.002)
    assert b.write_s == 0.010
    for _ in range(5):
        b.learn_write(0.040)
    assert b.write_s == 0.040  # the 99th percentile of what this link really does


def test_a_few_slow_fsyncs_do_not_starve_admission() -> None:
    b = VerdictBudget(base_write_s=0.010)
    for i in range(200):
        b.learn_queue(0.300 if i % 10 == 0 else 0.003)  # one wait in ten behind a slow disk flush
    assert b.queue_s == 0.003
    assert b.admission_s(0.020) == 0.023


def test_one_long_wait_does_not_starve_admission_for_minutes() -> None:
    b = VerdictBudget(base_write_s=0.010)
    for _ in range(100):
        b.learn_queue(0.003)
    b.learn_queue(30.0)  # one wait across a reconnect
    assert b.queue_s == 0.003
    assert b.admission_s(0.020) == 0.023


def test_inference_wait_leaves_room_for_the_queue_and_is_bounded_while_the_conveyor_stands() -> None:
    b = VerdictBudget(base_write_s=0.010)
    b.learn_queue(0.005)
    assert abs(b.inference_wait(0.100) - 0.095) < 1e-12
    assert b.inference_wait(0.002) == 0.0
    assert b.inference_wait(float("inf")) == MAX_WAIT_S


def test_an_entry_beyond_the_first_request_lands_one_typical_request_later() -> None:
    b = VerdictBudget(base_write_s=0.010)
    for t in (0.001, 0.002, 0.003):
        b.learn_write(t)
    assert b.lands_after(False) == 0.0
    assert b.lands_after(True) == 0.002
