"""Drift: is the line still showing the model what it was validated on?

Per model (one per product), the parts inspected lately against the model's validation good
images (`DriftReference`, written beside the model by models/drift_reference.py):
- brightness: the mean grey level of the last `window` parts, relative to the reference's;
- focus: the log ratio of their median focus (workers/image_stats.py) to the reference's;
- scores: the share of the last `score_window` passed parts scoring above the 95th percentile of
  the validation good scores (5 % by construction; a new kind of part or defect the model half
  sees pushes it up).
Each has a stated limit; beyond it the `drift` alarm (a warning: the verdicts stay fail-safe, but
a person should look: relight, refocus, relabel, retrain). An alarm clears only well inside the
limit again (at `CLEAR_AT` of it), so a figure hovering at the limit does not flap.
Pure: results in, state out. Not here: the alarm's plumbing (controller/app.py).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

BRIGHTNESS_LIMIT = 0.10
"""Relative change of the window's mean brightness (steady: its spread is ~1.5 % over 200 parts)."""
FOCUS_LIMIT = 0.40
"""|ln(window median focus / reference median)| (×1.5 or ÷1.5; steady spread ~0.05)."""
HIGH_SCORE_LIMIT = 0.10
"""Share of passed parts above the reference good p95 (expected ≤ 5 %; steady spread ~1 % over 500)."""
CLEAR_AT = 0.7
"""An alarm clears when every figure is back within this fraction of its limit."""


@dataclass(frozen=True, slots=True)
class DriftReference:
    model_version: str
    brightness: float
    """Mean brightness of the validation good images."""
    focus: float
    """Median focus of the validation good images."""
    score_p95: float
    """95th percentile of the validation good images' scores."""
    images: int

    @staticmethod
    def from_json(data: dict[str, Any]) -> DriftReference:
        """Raises ValueError naming the key that is missing or not a positive number."""
        values = {}
        for key in ("brightness", "focus", "score_p95", "images"):
            value = data.get(key)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"drift reference: {key!r} must be a positive number, got {value!r}")
            values[key] = value
        version = data.get("model_version")
        if not isinstance(version, str) or not version:
            raise ValueError("drift reference: 'model_version' must be the model's version")
        return DriftReference(version, float(values["brightness"]), float(values["focus"]),
                              float(values["score_p95"]), int(values["images"]))  # fmt: skip


@dataclass(slots=True)
class _Window:
    brightness: deque[float]
    focus: deque[float]
    passed_high: deque[bool]


@dataclass(slots=True)
class DriftMonitor:
    references: dict[str, DriftReference] = field(default_factory=dict)
    """By model version; a model without one is not watched."""
    window: int = 200
    score_window: int = 500
    alarm: bool = False
    detail: str = ""
    figures: dict[str, float] = field(default_factory=dict)
    """The figures of the model judged last: brightness_change, focus_log_ratio, high_score_share."""
    _windows: dict[str, _Window] = field(default_factory=dict)

    def observe(self, model_version: str, brightness: float | None, focus: float | None, score: float,
                passed: bool) -> bool:  # fmt: skip
        """One inspected part; returns True when the alarm state changed."""
        ref = self.references.get(model_version)
        if ref is None or brightness is None or focus is None:
            return False
        w = self._windows.get(model_version)
        if w is None:
            w = self._windows[model_version] = _Window(deque(maxlen=self.window), deque(maxlen=self.window),
                                                       deque(maxlen=self.score_window))  # fmt: skip
        w.brightness.append(brightness)
        w.focus.append(max(focus, 1e-6))
        if passed:
            w.passed_high.append(score > ref.score_p95)
        return self._judge(ref, w)

    def _judge(self, ref: DriftReference, w: _Window) -> bool:
        ratios: dict[str, float] = {}
        if len(w.brightness) == self.window:
            change = self._set("brightness_change", sum(w.brightness) / len(w.brightness) / ref.brightness - 1)
            ratios["brightness"] = abs(change) / BRIGHTNESS_LIMIT
            ratios["focus"] = abs(self._set("focus_log_ratio", math.log(_median(w.focus) / ref.focus))) / FOCUS_LIMIT
        if len(w.passed_high) == self.score_window:
            share = self._set("high_score_share", sum(w.passed_high) / len(w.passed_high))
            ratios["scores"] = share / HIGH_SCORE_LIMIT
        if not ratios:
            return False
        beyond = sorted(name for name, r in ratios.items() if r > 1.0)
        was = self.alarm
        if beyond:
            self.alarm = True
            self.detail = "drift beyond its limit: " + ", ".join(self._describe(n) for n in beyond)
        elif self.alarm and all(r <= CLEAR_AT for r in ratios.values()):
            self.alarm, self.detail = False, ""
        return self.alarm != was

    def _set(self, name: str, value: float) -> float:
        self.figures[name] = value
        return value

    def _describe(self, name: str) -> str:
        f = self.figures
        if name == "brightness":
            return f"brightness {f['brightness_change']:+.0%} (limit ±{BRIGHTNESS_LIMIT:.0%})"
        if name == "focus":
            return (f"focus ×{math.exp(f['focus_log_ratio']):.2f} "
                    f"(limit ×{math.exp(-FOCUS_LIMIT):.2f}–{math.exp(FOCUS_LIMIT):.2f})")  # fmt: skip
        return (f"{f['high_score_share']:.1%} of passed parts score above the validation good parts' 95th "
                f"percentile (limit {HIGH_SCORE_LIMIT:.0%})")  # fmt: skip


def _median(values: deque[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
