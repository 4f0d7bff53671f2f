"""`lineinspect dataset add-from-journal`: labelled production frames back into a dataset folder.

Every part whose latest label came from a person (an operator's flag, a review; the simulator's
truth only when asked) and whose frame the journal still holds becomes an image in the dataset's
class folder, named after where it came from (`journal-<line>-<epoch>-<seq>.png`), with its
provenance — line, when, result id, who labelled it, what the line had said — in
`provenance.jsonl`. A frame already in the dataset is never added twice (by name and by the
pixels' hash); relabelled since, it moves to its new class. A class new to the dataset gets its
folder and joins dataset.json's class list. `dataset check` runs afterwards.
Not here: labelling (models/review.py, controller/labels.py), training (models/train.py).
"""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from controller.adapters.journal import read_image
from controller.labels import latest_labels
from models.dataset import write_info
from models.dataset_check import INFO_FILE, check_dataset

PROVENANCE = "provenance.jsonl"


def add_from_journal(
    journal: Path, dataset: Path, *, sources: tuple[str, ...] = ("operator", "review"), line: str | None = None,
    roi: tuple[int, int, int, int] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Append the labelled frames; returns what was added, moved and skipped, and the check's verdict."""
    line = line or socket.gethostname()
    labels = latest_labels(journal, sources)
    dataset.mkdir(parents=True, exist_ok=True)
    info = json.loads((dataset / INFO_FILE).read_text()) if (dataset / INFO_FILE).is_file() else None
    if info is None:
        write_info(dataset, roi)
        info = {"roi": list(roi) if roi else None}
    known = _known(dataset)
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10.0)
    added: Counter[str] = Counter()
    moved, already, no_frame = 0, 0, 0
    try:
        parts = {(r[0], r[1]): r[2:] for r in db.execute(
            "SELECT epoch, seq, outcome, reason, defect_class, score, model_version, wall_utc FROM parts")}  # fmt: skip
        with (dataset / PROVENANCE).open("a") as provenance:
            for (epoch, seq), label in sorted(labels.items()):
                name = f"journal-{line}-{epoch}-{seq}.png"
                frame = read_image(db, epoch, seq)
                if frame is None:
                    no_frame += 1
                    continue
                digest = hashlib.sha256(np.ascontiguousarray(frame).tobytes()).hexdigest()
                where = known.get(digest)
                if where is None and name in known:
                    name = f"{name[:-4]}-{digest[:8]}.png"  # same place and number, other pixels: another part
                if where is not None and where.parent.name == label.true_class:
                    already += 1
                    continue
                target = dataset / label.true_class / (where.name if where is not None else name)
                target.parent.mkdir(exist_ok=True)
                if where is not None:
                    where.rename(target)  # relabelled since it was added
                    moved += 1
                else:
                    Image.fromarray(frame).save(target)
                    added[label.true_class] += 1
                known[target.name] = known[digest] = target
                outcome, reason, cls, score, version, wall = parts.get((epoch, seq), (None,) * 6)
                provenance.write(json.dumps({
                    "file": f"{label.true_class}/{target.name}", "class": label.true_class, "sha256": digest,
                    "line": line, "journal": str(journal), "result_id": label.result_id, "part_utc": wall,
                    "line_said": {"outcome": outcome, "reason": reason, "defect_class": cls, "score": score,
                                  "model_version": version},
                    "labeled_by": label.labeled_by, "label_source": label.source, "label_utc": label.wall_utc,
                    "note": label.note, "added_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                    "moved": where is not None,
                }) + "\n")  # fmt: skip
    finally:
        db.close()
    _declare_classes(dataset, info)
    report = check_dataset(dataset)
    return {"dataset": str(dataset), "labels": len(labels), "added": dict(added), "moved_to_new_class": moved,
            "already_in_dataset": already, "frame_gone": no_frame, "check_ok": report.ok,
            "check": report.text()}  # fmt: skip


def _known(dataset: Path) -> dict[str, Path]:
    """Every image file by name, and every journal frame added before by its pixels' hash."""
    known: dict[str, Path] = {}
    for path in dataset.glob("*/*"):
        if path.is_file() and path.parent.name != "ground_truth":
            known[path.name] = path
    if (dataset / PROVENANCE).is_file():
        for line in (dataset / PROVENANCE).read_text().splitlines():
            rec = json.loads(line)
            path = dataset / rec["file"]
            if path.name in known:
                known[rec["sha256"]] = known[path.name]
    return known


def _declare_classes(dataset: Path, info: dict[str, Any]) -> None:
    """A dataset.json that lists its classes lists the new ones too (after the others)."""
    declared = info.get("classes")
    if declared is None:
        return
    folders = sorted(p.name for p in dataset.iterdir() if p.is_dir() and p.name != "ground_truth")
    new = [c for c in folders if c not in declared]
    if new:
        info["classes"] = [*declared, *new]
        (dataset / INFO_FILE).write_text(json.dumps(info) + "\n")
