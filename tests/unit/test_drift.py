"""The drift watch: quiet on a steady line, alarmed by dimmed light, blur, or scores creeping up,
and not flapping at its limit."""

from __future__ import annotations

import numpy as np
import pytest

from controller.core.drift import DriftMonitor, DriftReference

REF = DriftReference("m1", brightness=125.0, focus=270.0, score_p95=0.37, images=500)


def steady_parts(rng: np.random.Generator, n: int, light: float = 1.0, blur: float = 1.0,
                 high: float = 0.05) -> list[tuple[float, float, float, bool]]:  # fmt: skip
    """(brightness, focus, score, passed) like the simulator's good parts (spreads measured there)."""
    brightness = rng.normal(125.0, 26.0, n) * light
    focus = np.exp(rng.normal(np.log(270.0), 0.7, n)) * light**2 * blur
    scores = np.where(rng.random(n) < high, 0.45, 0.2)
    return [(float(b), float(f), float(s), True) for b, f, s in zip(brightness, focus, scores, strict=True)]


def feed(monitor: DriftMonitor, parts: list[tuple[float, float, float, bool]], version: str = "m1") -> list[bool]:
    return [monitor.observe(version, *p) and monitor.alarm for p in parts]


@pytest.mark.parametrize("seed", range(5))
def test_a_steady_line_never_alarms(seed: int) -> None:
    monitor = DriftMonitor({"m1": REF})
    assert not any(feed(monitor, steady_parts(np.random.default_rng(seed), 5000)))
    assert set(monitor.figures) == {"brightness_change", "focus_log_ratio", "high_score_share"}


@pytest.mark.parametrize(("change", "named"), [({"light": 0.85}, "brightness"), ({"blur": 0.4}, "focus"),
                                               ({"high": 0.2}, "score")])  # fmt: skip
def test_each_kind_of_drift_raises_the_alarm_naming_it(change: dict[str, float], named: str) -> None:
    rng = np.random.default_rng(1)
    monitor = DriftMonitor({"m1": REF})
    feed(monitor, steady_parts(rng, 600))
    assert not monitor.alarm
    raised = feed(monitor, steady_parts(rng, 600, **change))
    assert monitor.alarm and named in monitor.detail and sum(raised) == 1


def test_the_alarm_clears_well_inside_the_limit_only_and_does_not_flap() -> None:
    rng = np.random.default_rng(2)
    monitor = DriftMonitor({"m1": REF})
    feed(monitor, steady_parts(rng, 300, light=0.85))
    assert monitor.alarm
    near = steady_parts(rng, 400, light=0.91)  # just inside the 10 % limit: stays raised, no clear/raise
    assert not any(monitor.observe("m1", *p) for p in near) and monitor.alarm
    feed(monitor, steady_parts(rng, 400))
    assert not monitor.alarm


def test_a_model_without_reference_or_stats_is_not_watched() -> None:
    monitor = DriftMonitor({"m1": REF})
    assert not any(feed(monitor, steady_parts(np.random.default_rng(3), 600, light=0.5), version="other"))
    assert not monitor.observe("m1", None, None, 0.1, True) and not monitor.figures


@pytest.mark.parametrize("bad", [{"brightness": 0}, {"focus": "x"}, {"model_version": ""}, {"images": True}])
def test_a_bad_reference_is_refused_naming_the_key(bad: dict[str, object]) -> None:
    data: dict[str, object] = {"model_version": "m1", "brightness": 1.0, "focus": 1.0, "score_p95": 0.3,
                               "images": 100, **bad}  # fmt: skip
    with pytest.raises(ValueError, match=repr(next(iter(bad))).strip("'")):
        DriftReference.from_json(data)
