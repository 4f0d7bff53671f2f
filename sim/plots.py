"""Plots of a simulated run for people: latency from trigger to verdict-in-PLC, and each part's
verdict arrival against its decision instant (the margin at a glance).

Not here: the numbers themselves (sim/judge.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on a line PC or in CI
import matplotlib.pyplot as plt


def plot_run(report: dict[str, Any], out: Path) -> Path:
    decisions = [d for d in report["decisions"] if d["verdict_at"] is not None]
    t0 = min((d["trigger_at"] for d in report["decisions"]), default=0.0)
    latency = [(d["verdict_at"] - d["trigger_at"]) * 1000 for d in decisions]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.hist(latency, bins=50, color="#3b6ea8")
    ax1.set(title="trigger → verdict in PLC", xlabel="ms", ylabel="parts")
    ax1.set_yscale("log")
    for d in report["decisions"]:
        t = d["trigger_at"] - t0
        deadline = (d["decided_at"] - d["trigger_at"]) * 1000
        ax2.plot([t, t], [0, deadline], color="#dddddd", lw=0.6, zorder=1)
    colors = {"pass": "#2a9d4b", "reject_vision": "#e08a1e", "reject_failsafe": "#c0392b"}
    for gate, color in colors.items():
        pts = [(d["trigger_at"] - t0, (d["verdict_at"] - d["trigger_at"]) * 1000)
               for d in decisions if d["gate"] == gate]  # fmt: skip
        if pts:
            ax2.scatter(*zip(*pts, strict=True), s=4, color=color, label=f"verdict arrived ({gate})", zorder=2)
    missing = [(d["trigger_at"] - t0, (d["decided_at"] - d["trigger_at"]) * 1000)
               for d in report["decisions"] if d["verdict_at"] is None]  # fmt: skip
    if missing:
        ax2.scatter(*zip(*missing, strict=True), s=12, marker="x", color="#c0392b", label="no verdict at decision")
    ax2.set(title="verdict arrival vs decision point (grey bar: time to the gate)",
            xlabel="run time (s)", ylabel="ms after trigger")  # fmt: skip
    ax2.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
