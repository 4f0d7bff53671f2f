"""The drift reference of a model: what its good parts looked like and scored where it was
validated, written beside it as `<model>.drift.json` for the controller's drift watch
(controller/core/drift.py).

From a dataset folder's good images (better: images the model was not trained on), or, for the
simulated line's models, freshly rendered good frames of the generator (a seed never trained on).
The statistics are measured by the line's own engine (ONNX Runtime), so they are what the
controller will compare with. Not here: judging drift.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models import synthetic
from models.dataset import list_dataset
from workers.onnx_engine import OnnxRuntimeEngine

BATCH = 32


def drift_reference(model: Path, frames: list[np.ndarray]) -> dict[str, Any]:
    """Brightness, focus and score statistics of good `frames` as the engine sees them."""
    if len(frames) < 100:
        raise ValueError(f"a drift reference needs at least 100 good images, got {len(frames)}")
    engine = OnnxRuntimeEngine(model, intra_op_threads=2)
    results = []
    for i in range(0, len(frames), BATCH):
        results += engine.infer_batch(frames[i : i + BATCH])
    brightness = np.array([r.brightness for r in results], float)
    focus = np.array([r.focus for r in results], float)
    scores = np.array([r.score for r in results], float)
    return {
        "model_version": engine.meta.version, "images": len(frames),
        "brightness": float(brightness.mean()), "brightness_std": float(brightness.std()),
        "focus": float(np.median(focus)), "focus_log_std": float(np.log(np.maximum(focus, 1e-6)).std()),
        "score_p95": float(np.percentile(scores, 95)), "score_p50": float(np.median(scores)),
    }  # fmt: skip


def write_drift_reference(model: Path, frames: list[np.ndarray]) -> Path:
    path = model.with_suffix(".drift.json")
    path.write_text(json.dumps(drift_reference(model, frames), indent=2) + "\n")
    return path


def good_frames_of(dataset: Path, limit: int = 1000, files: list[str] | None = None) -> list[np.ndarray]:
    """The dataset's good images (or only `files`, relative to it: a training run's validation set)."""
    layout = list_dataset(dataset)
    mode = "L" if layout.color == "gray" else "RGB"
    paths = [layout.root / f for f in files] if files is not None else layout.images["good"]
    return [np.asarray(Image.open(p).convert(mode)) for p in paths[:limit]]


def rendered_good_frames(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [synthetic.render_frame(rng, "good")[0] for _ in range(count)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.drift_reference", description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", type=Path, help="a dataset folder: its good images (not the training ones)")
    src.add_argument("--synthetic-seed", type=int, help="render good frames of the simulator's generator")
    p.add_argument("--count", type=int, default=500, help="with --synthetic-seed: how many frames")
    args = p.parse_args(argv)
    frames = good_frames_of(args.dataset) if args.dataset else rendered_good_frames(args.synthetic_seed, args.count)
    print(write_drift_reference(args.model, frames))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
