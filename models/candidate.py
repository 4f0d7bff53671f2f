"""`lineinspect candidate`: is a new model better than the one the line runs, on the same terms?

Two views, both through the line's own engine (ONNX Runtime):
- the fixed held-out set: each model's detection rate at the same false-reject rate on that set's
  good images (each model cut at its own score for that rate, so a model cannot look better by
  rejecting more), per class, and at each model's own threshold;
- a replay of the last N frames in the journal: how often the two decide alike, and, where a
  person labelled the part, what the candidate newly catches and newly misses.
The candidate may be promoted only if, at the same false-reject rate, it does not detect less on
the held-out set beyond chance (paired, exact McNemar); on replay it catches at least as many of the
labelled defective parts as the active model (a retrained model always swaps a few borderline parts:
what it newly misses is listed, and must be outweighed by what it newly catches); its own threshold's
false-reject rate on the held-out good images is not above 1.5x the target beyond doubt (the 95 %
Wilson interval's lower end: a few hundred good images cannot tell 1 % from 2 %); and its export
passed the parity gate (ONNX equals the trained network, models/export.py). The verdict and numbers
go into its registry entry.
Not here: the registry's files (controller/registry.py).
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from controller.adapters.journal import read_image
from controller.core.agreement import wilson
from controller.labels import latest_labels
from models.evaluate import detection_at_frr, score_dataset
from workers.onnx_engine import OnnxRuntimeEngine

FRR_SLACK = 1.5
"""A candidate's own threshold must not reject more than this multiple of the target on held-out good
images, beyond the measurement's 95 % interval."""
WORSE_P = 0.05
"""A candidate detecting less than the active model on held-out images is refused when chance alone
would explain the difference less often than this (a retrained model always swaps a few borderline
images; on 100 defects one image is a point)."""
PARITY_LIMIT = 1e-3
"""Largest |ONNX − trained network| on the golden frames that passes the export parity gate."""


def held_out(candidate: OnnxRuntimeEngine, active: OnnxRuntimeEngine, dataset: Path, frr: float,
             console: Console) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {"dataset": str(dataset), "frr": frr}
    caught: dict[str, np.ndarray] = {}
    for who, engine in (("candidate", candidate), ("active", active)):
        scored = score_dataset(engine, dataset, console)
        names = np.array(scored.names)
        good, defect = scored.scores[names == "good"], scored.scores[names != "good"]
        cut, detection = detection_at_frr(good, defect, frr)
        rejects = scored.scores >= engine.meta.threshold
        out[who] = {
            "version": engine.meta.version, "detection_at_frr": detection, "cut": cut,
            "by_class_at_frr": {c: float((scored.scores[names == c] >= cut).mean())
                                for c in sorted(set(scored.names) - {"good"})},
            "own_threshold": {"threshold": engine.meta.threshold, "detection": float(rejects[names != "good"].mean()),
                              "false_rejects": float(rejects[names == "good"].mean()),
                              "false_rejects_low95": wilson(int(rejects[names == "good"].sum()), len(good))[0]},
            "good": len(good), "defective": len(defect),
        }  # fmt: skip
        caught[who] = defect >= cut
    # Paired: the same defective images, each model at its own cut for the same false-reject rate.
    only_active = int((caught["active"] & ~caught["candidate"]).sum())
    only_candidate = int((caught["candidate"] & ~caught["active"]).sum())
    out["only_active"], out["only_candidate"] = only_active, only_candidate
    out["worse_p"] = _worse_p(only_active, only_candidate)
    return out


def _worse_p(only_active: int, only_candidate: int) -> float:
    """One-sided exact McNemar: the chance of the candidate missing at least this many more of the
    discordant images than it catches if both models were equally good."""
    from scipy.stats import binomtest

    n = only_active + only_candidate
    return 1.0 if n == 0 else float(binomtest(only_active, n, 0.5, alternative="greater").pvalue)


def replay(candidate: OnnxRuntimeEngine, active: OnnxRuntimeEngine, journal: Path, last: int) -> dict[str, Any]:
    """Both models on the journal's last `last` stored frames."""
    labels = latest_labels(journal)
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10.0)
    try:
        keys = db.execute("SELECT epoch, seq FROM images ORDER BY rowid DESC LIMIT ?", (last,)).fetchall()
        frames = [(k, read_image(db, *k)) for k in reversed(keys)]
    finally:
        db.close()
    frames = [(k, f) for k, f in frames if f is not None]
    agree = changed_to_reject = changed_to_pass = 0
    newly_caught, newly_missed, newly_false, labelled = [], [], [], 0
    for i in range(0, len(frames), 32):
        chunk = frames[i : i + 32]
        images = [f for _, f in chunk]
        for (key, _), c, a in zip(chunk, candidate.infer_batch(images), active.infer_batch(images), strict=True):
            agree += c.reject == a.reject
            changed_to_reject += c.reject and not a.reject
            changed_to_pass += a.reject and not c.reject
            label = labels.get(key)
            if label is None:
                continue
            labelled += 1
            rid = f"{key[0]}/{key[1]}"
            if label.true_class != "good" and c.reject and not a.reject:
                newly_caught.append(rid)
            elif label.true_class != "good" and a.reject and not c.reject:
                newly_missed.append(rid)
            elif label.true_class == "good" and c.reject and not a.reject:
                newly_false.append(rid)
    return {"journal": str(journal), "frames": len(frames), "agreement": agree / len(frames) if frames else math.nan,
            "candidate_rejects_more": changed_to_reject, "candidate_passes_more": changed_to_pass,
            "labelled": labelled, "newly_caught": newly_caught, "newly_missed": newly_missed,
            "newly_false_rejects": newly_false}  # fmt: skip


def compare(candidate_path: Path, active_path: Path, *, dataset: Path | None, journal: Path | None,
            replay_last: int = 500, frr: float = 0.01, parity: dict[str, float] | None = None,
            console: Console | None = None) -> dict[str, Any]:  # fmt: skip
    """The comparison and its verdict: {'promotable': bool, 'reasons': [...], ...}."""
    console = console or Console(stderr=True)
    candidate = OnnxRuntimeEngine(candidate_path, intra_op_threads=2)
    active = OnnxRuntimeEngine(active_path, intra_op_threads=2)
    result: dict[str, Any] = {"candidate": candidate.meta.version, "against": active.meta.version, "frr": frr}
    reasons = []
    if dataset is None:
        reasons.append("no fixed held-out set: the false-reject rate and detection at it are measured there "
                       "(a replay alone cannot show a model that rejects more good parts)")
    if dataset is not None:
        h = result["held_out"] = held_out(candidate, active, dataset, frr, console)
        c, a = h["candidate"], h["active"]
        if h["worse_p"] < WORSE_P:
            reasons.append(f"held-out detection at {frr:.1%} false rejects {c['detection_at_frr']:.1%} < the active "
                           f"model's {a['detection_at_frr']:.1%} beyond chance: it misses {h['only_active']} defective "
                           f"images the active model catches and catches only {h['only_candidate']} it misses "
                           f"(one-sided exact McNemar p = {h['worse_p']:.3f})")  # fmt: skip
        own = c["own_threshold"]
        if own["false_rejects_low95"] > frr * FRR_SLACK:
            reasons.append(f"its own threshold rejects {own['false_rejects']:.2%} of held-out good images, at "
                           f"least {own['false_rejects_low95']:.2%} (95 %) (target {frr:.1%}, limit "
                           f"{frr * FRR_SLACK:.2%})")  # fmt: skip
    if journal is not None:
        r = result["replay"] = replay(candidate, active, journal, replay_last)
        if len(r["newly_missed"]) > len(r["newly_caught"]):
            reasons.append(f"on replay it newly misses {len(r['newly_missed'])} labelled defective part(s) the active "
                           f"model caught (e.g. {r['newly_missed'][0]}) and newly catches only "
                           f"{len(r['newly_caught'])}")  # fmt: skip
    result["parity"] = parity
    if parity is None:
        reasons.append("no export parity result (no checkpoint to compare the ONNX export with)")
    elif max(parity.values(), default=math.inf) > PARITY_LIMIT:
        reasons.append(f"export parity failed: max difference {max(parity.values()):.2e} > {PARITY_LIMIT:.0e}")
    result["promotable"], result["reasons"] = not reasons, reasons
    return result
