"""`lineinspect report shadow`: what a run in shadow mode says about going live, from the journal.

Reads the gate's decisions the controller recorded (the PLC's decision ring: what the gate did, the
vision verdict it read, the existing inspection's verdict) and the latest label of each part where
someone established its truth (an operator, a review, the simulator: controller/labels.py), and writes `shadow.json`,
plots and `shadow.html` with the agreement tables (controller/core/agreement.py), per shift, per
defect class and over the run, and the readiness verdict with its criteria.
Not here: the statistics themselves (controller/core/agreement.py).
"""

from __future__ import annotations

import html
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from controller.core import plc_codec as c
from controller.core.agreement import Inspected, agreement
from controller.core.gate_decisions import vision_rejects
from controller.errors import ConfigError
from controller.labels import latest_labels

BLOCK_PARTS = 200
"""Parts per point of the over-the-run plot."""


@dataclass(frozen=True, slots=True)
class Shifts:
    hours: float = 8.0
    first_starts_at: float = 6.0
    """Hour of the day (local to the journal's UTC times) at which a shift starts."""

    def name(self, wall_utc: str) -> str:
        t = datetime.fromisoformat(wall_utc)
        start = t.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(hours=self.first_starts_at)
        while start > t:
            start -= timedelta(hours=self.hours)
        while start + timedelta(hours=self.hours) <= t:
            start += timedelta(hours=self.hours)
        return start.strftime("%Y-%m-%d %H:%M")


def read_shadow_parts(journal: Path, shifts: Shifts = Shifts()) -> tuple[list[Inspected], dict[str, int]]:
    """One `Inspected` per part decided in shadow mode, in decision order, and what was left out."""
    if not journal.is_file():
        raise ConfigError(f"no journal at {journal}")
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "gate_decisions" not in tables:
            raise ConfigError(f"{journal} has no gate decisions (a journal of interface version 1?)")
        rows = db.execute("SELECT epoch, seq, gate, vision, reference, flags, wall_utc FROM gate_decisions "
                          "ORDER BY wall_utc, epoch, seq").fetchall()  # fmt: skip
    finally:
        db.close()
    labels = latest_labels(journal)
    parts, production = [], 0
    for epoch, seq, gate, vision, reference, flags, wall_utc in rows:
        entry = c.DecisionEntry(seq, gate, vision, reference, flags)
        if not entry.shadow:
            production += 1
            continue
        parts.append(Inspected(
            vision_reject=vision_rejects(entry),
            vision_failsafe=not (entry.vision_valid and vision in (c.PASS, c.REJECT)),
            reference_reject=None if reference == c.NO_REFERENCE else reference != c.PASS,
            truth=label.true_class if (label := labels.get((epoch, seq))) else None,
            shift=shifts.name(wall_utc),
        ))  # fmt: skip
    return parts, {"decided_in_production": production, "decided_in_shadow": len(parts)}


def shadow_report(journal: Path, out: Path, shifts: Shifts = Shifts()) -> dict[str, Any]:
    parts, counted = read_shadow_parts(journal, shifts)
    if not parts:
        raise ConfigError(f"{journal}: no part was decided in shadow mode ({counted['decided_in_production']} "
                          "decided in production): request shadow mode, then run the line")  # fmt: skip
    result = agreement(parts)
    result["journal"] = str(journal)
    result["counted"] = counted
    result["over_the_run"] = _blocks(parts)
    out.mkdir(parents=True, exist_ok=True)
    result["plots"] = _plots(result, out)
    (out / "shadow.json").write_text(json.dumps(result, indent=2))
    (out / "shadow.html").write_text(render_html(result))
    return result


def _blocks(parts: list[Inspected]) -> list[dict[str, Any]]:
    """Escape and false-reject rates of both inspections per block of parts (fatigue, drift)."""
    out = []
    for start in range(0, len(parts), BLOCK_PARTS):
        table = agreement(parts[start:start + BLOCK_PARTS])["overall"]
        out.append({"first_part": start + 1, "parts": table["parts"], **{
            k: table[k]["rate"] if table[k]["n"] else None
            for k in ("vision_escapes", "reference_escapes", "vision_false_rejects", "reference_false_rejects")
        }, "agreement": table["agreement"]["rate"]})  # fmt: skip
    return out


def _plots(result: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = result["overall"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.5))
    names = ["escapes", "false_rejects"]
    for i, who in enumerate(["vision", "reference"]):
        rates = [overall[f"{who}_{n}"] for n in names]
        x = [j + (i - 0.5) * 0.36 for j in range(len(names))]
        mid = [r["rate"] * 100 for r in rates]
        err = [[(r["rate"] - r["low95"]) * 100 for r in rates], [(r["high95"] - r["rate"]) * 100 for r in rates]]
        ax1.bar(x, mid, 0.34, yerr=err, capsize=4, label=who, color=("#3b6ea8", "#b0b0b0")[i])
    ax1.set_xticks(range(len(names)), ["escapes (of defective)", "false rejects (of good)"])
    ax1.set(title="rates with 95 % intervals (truth known)", ylabel="%")
    ax1.legend()
    blocks = result["over_the_run"]
    first = [b["first_part"] for b in blocks]
    for key, color, style in [("vision_escapes", "#3b6ea8", "-"), ("reference_escapes", "#808080", "-"),
                              ("vision_false_rejects", "#3b6ea8", "--"), ("reference_false_rejects", "#808080", "--")]:
        pts = [(f, b[key] * 100) for f, b in zip(first, blocks, strict=True) if b[key] is not None]
        if pts:
            ax2.plot(*zip(*pts, strict=True), style, color=color, marker="o", ms=3, label=key.replace("_", " "))
    ax2.set(title=f"over the run, per {BLOCK_PARTS} parts", xlabel="part", ylabel="%")
    ax2.legend(fontsize=7)
    classes = sorted(result["by_class"])
    for i, who in enumerate(["vision", "reference"]):
        caught = [result["by_class"][k][f"{who}_caught"] / max(1, result["by_class"][k]["parts"]) * 100
                  for k in classes]  # fmt: skip
        ax3.bar([j + (i - 0.5) * 0.36 for j in range(len(classes))], caught, 0.34, label=who,
                color=("#3b6ea8", "#b0b0b0")[i])  # fmt: skip
    ax3.set_xticks(range(len(classes)), classes)
    ax3.set(title="defective parts caught, by class", ylabel="%", ylim=(0, 105))
    ax3.legend()
    fig.tight_layout()
    path = out / "shadow.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def _pct(r: dict[str, Any]) -> str:
    if not r["n"]:
        return "–"
    return f"{r['rate']:.2%} ({r['k']}/{r['n']}; 95 %: {r['low95']:.2%}–{r['high95']:.2%})"


def _table_rows(name: str, t: dict[str, Any]) -> str:
    cells = [name, str(t["parts"]), str(t["both_pass"]), str(t["both_reject"]), str(t["vision_only_reject"]),
             str(t["reference_only_reject"]), str(t["no_reference"]), _pct(t["agreement"]), _pct(t["vision_escapes"]),
             _pct(t["reference_escapes"]), _pct(t["vision_false_rejects"]), _pct(t["reference_false_rejects"]),
             _pct(t["vision_failsafe"])]  # fmt: skip
    return "<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in cells) + "</tr>"


def render_html(result: dict[str, Any]) -> str:
    esc = html.escape
    ready = result["readiness"]
    head = ("<tr><th>scope</th><th>parts</th><th>both pass</th><th>both reject</th><th>only vision rejects</th>"
            "<th>only reference rejects</th><th>no reference</th><th>agreement</th><th>vision escapes</th>"
            "<th>reference escapes</th><th>vision false rejects</th><th>reference false rejects</th>"
            "<th>vision fail-safe</th></tr>")  # fmt: skip
    rows = _table_rows("whole run", result["overall"]) + "".join(
        _table_rows(f"shift from {name}", t) for name, t in result["shifts"].items())
    criteria = "".join(f"<tr><td>{'✔' if c['holds'] else '✘'}</td><td>{esc(c['criterion'])}</td>"
                       f"<td>{esc(str(c['value']))}</td></tr>" for c in ready["criteria"])  # fmt: skip
    classes = "".join(f"<tr><td>{esc(k)}</td>" + "".join(f"<td>{v}</td>" for v in row.values()) + "</tr>"
                      for k, row in sorted(result["by_class"].items()))  # fmt: skip
    plots = "".join(f'<img src="{esc(p)}" style="max-width:100%">' for p in result["plots"])
    color = "#2a9d4b" if ready["ready"] else "#c0392b"
    counted = result["counted"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>lineinspect shadow mode: {esc(ready["verdict"])}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}}
table{{border-collapse:collapse;margin:1em 0}} th{{background:#f3f3f3}}</style></head><body>
<h1>Shadow mode: <span style="color:{color}">{esc(ready["verdict"])}</span></h1>
<p>Journal {esc(result["journal"])}: {counted["decided_in_shadow"]} parts decided in shadow mode
({counted["decided_in_production"]} in production, not counted). Truth known for
{result["overall"]["truth_known"]} parts ({result["overall"]["defective"]} defective). "Vision rejects"
includes fail-safe rejects (no valid verdict in time): what the gate would have done on vision alone.
Rates against the truth are only as representative as the labelled parts: at a plant, label a random
sample of parts besides the review queue (which holds disagreements and near misses by design).</p>
<h2>Go-live criteria</h2><table>{criteria}</table>
<h2>Vision against the existing inspection</h2><table>{head}{rows}</table>
<h2>By defect class (truth known)</h2><table><tr><th>class</th><th>parts</th><th>vision caught</th>
<th>reference caught</th><th>only vision caught</th><th>only reference caught</th></tr>{classes}</table>
{plots}
</body></html>
"""
