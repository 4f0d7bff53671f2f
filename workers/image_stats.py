"""What a frame looks like, cheaply, for drift: mean brightness and focus of the inspected region.

Computed by the engines beside inference (about 40 µs for a 128 px ROI on a CPU; a region over 256
px is subsampled to stay near that), so the
controller's loop never touches pixels for it. Focus is the mean squared 4-neighbour Laplacian:
it falls when the image blurs or dims, rises with noise; a change of lighting moves brightness
first. Not here: judging drift (controller/core/drift.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from workers.model_meta import ModelMeta


def image_stats(frames: Sequence[np.ndarray], meta: ModelMeta) -> list[tuple[float, float]]:
    """(brightness 0..255, focus) of each frame's ROI (the whole frame without one; colour: its mean)."""
    out = []
    for frame in frames:
        region = frame
        if meta.roi is not None:
            x, y, w, h = meta.roi
            region = frame[y : y + h, x : x + w]
        step = max(1, max(region.shape[:2]) // 256)  # a large sensor without an ROI: every step-th pixel
        r = region[::step, ::step].astype(np.float32)
        if r.ndim == 3:
            r = r.mean(axis=2)
        lap = 4 * r[1:-1, 1:-1] - r[:-2, 1:-1] - r[2:, 1:-1] - r[1:-1, :-2] - r[1:-1, 2:]
        out.append((float(r.mean()), float(np.mean(lap * lap)) if lap.size else 0.0))
    return out
