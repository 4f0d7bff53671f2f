"""`lineinspect model set-threshold`: re-calibrate an exported model for a false-reject target on
good images it never trained on, without retraining.

The model's score is monotone in its fused signal, so a new threshold is a new cut on the score:
the same order-statistic cut and stated confidence as training (models.thresholds). The ONNX graph
and weights stay as they are; the copy's metadata gets the threshold, the calibration (what, on
which images, when, by whom) and a version that names the threshold, so the journal and registry
tell the two apart. A target the images cannot support is refused, unless asked to accept it (then
the metadata says it does not hold).
"""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from PIL import Image
from rich.console import Console

from models.dataset import DatasetError
from models.dataset_check import IMAGE_SUFFIXES
from models.export import read_metadata
from models.thresholds import calibrated_cut
from models.train import dataset_hash
from workers.onnx_engine import OnnxRuntimeEngine


class CalibrationRefused(ValueError):
    """The images cannot support the target (or are the model's own training data)."""


def good_scores(engine: OnnxRuntimeEngine, folder: Path, console: Console, batch: int = 32) -> np.ndarray:
    """The model's scores of every image in `folder`/good (a dataset folder) or else in `folder`."""
    root = folder / "good" if (folder / "good").is_dir() else folder
    files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{root}: no images to calibrate on")
    scores = []
    with console.status(f"scoring {len(files)} good images"):
        for i in range(0, len(files), batch):
            frames = []
            for f in files[i : i + batch]:
                try:
                    frames.append(np.asarray(Image.open(f).convert("L" if engine.meta.color == "gray" else "RGB")))
                except OSError as exc:
                    raise DatasetError(f"{f}: unreadable image: {exc}") from None
            scores += [r.score for r in engine.infer_batch(frames)]
    return np.array(scores, np.float64)


def set_threshold(model: Path, good_dataset: Path, frr: float, out: Path, *, accept_unsupported: bool = False,
                  user: str | None = None, console: Console | None = None) -> dict[str, Any]:  # fmt: skip
    """Write `out`: `model` cut for `frr` on the good images of `good_dataset` (a dataset folder's
    good/, or a folder of good images). Returns the calibration written. Raises CalibrationRefused."""
    if not 0.0 < frr < 1.0:
        raise CalibrationRefused(f"false-reject rate {frr} is not in (0, 1)")
    console = console or Console(stderr=True)
    engine = OnnxRuntimeEngine(model, intra_op_threads=2)
    # Only an identical folder is caught: copies of training images would pass (and score low).
    if dataset_hash(good_dataset) == read_metadata(model)["train_data_hash"]:
        raise CalibrationRefused(f"{good_dataset} is the data {engine.meta.version} was trained on: its good images "
                                 "score lower than new ones; calibrate on good images it never saw")  # fmt: skip
    good = good_scores(engine, good_dataset, console)
    cal = calibrated_cut(good.astype(np.float64), frr)
    lo, hi = cal.interval
    if not cal.holds and not accept_unsupported:
        raise CalibrationRefused(
            f"{cal.n} good images cannot hold a {frr:.2%} false-reject rate (realized rate 90 % within {lo:.2%}.."
            f"{hi:.2%}; {cal.summary()['good_images_needed']} images needed); nothing written "
            "(--accept-unsupported writes it, marked as not holding)")  # fmt: skip
    calibration = {**cal.summary(), "dataset": str(good_dataset), "previous_threshold": engine.meta.threshold,
                   "previous_version": engine.meta.version, "when": datetime.now(UTC).isoformat(timespec="seconds"),
                   "by": user or getpass.getuser()}  # fmt: skip
    version = f"{engine.meta.version.split('+')[0]}+t{cal.cut:.6g}"
    proto = onnx.load(str(model))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({"lineinspect.threshold": repr(float(cal.cut)), "lineinspect.version": version,
                  "lineinspect.calibration": json.dumps(calibration)})  # fmt: skip
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return {**calibration, "version": version, "out": str(out)}
