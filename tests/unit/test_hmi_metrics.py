"""The Prometheus text the HMI serves: the shadow figures and dropped log lines of a status snapshot."""

from __future__ import annotations

from controller.status import LineStatus
from hmi.metrics import Metrics


def test_status_figures_become_samples() -> None:
    metrics = Metrics()
    metrics.on_status(LineStatus(shadow_mode=True, log_lines_dropped=7,
                                 shadow_counts={"decided": 10, "shadow": 10, "both_pass": 8, "both_reject": 1,
                                                "reference_only_reject": 1}))  # fmt: skip
    text = metrics.render()
    assert "lineinspect_shadow_mode 1" in text
    assert 'lineinspect_gate_decisions_total{agreement="both_pass"} 8' in text
    assert 'lineinspect_gate_decisions_total{agreement="reference_only_reject"} 1' in text
    assert 'agreement="decided"' not in text and 'agreement="shadow"' not in text  # totals, not agreements
    assert "lineinspect_log_lines_dropped_total 7" in text
