"""The one image → model-input transform: ROI crop, bilinear resize, gray → 3 channels, normalise,
NCHW float32.

Responsible for: doing exactly what the model's metadata says, identically on NumPy (CPU engines)
and CuPy (GPU engines): every step is plain array arithmetic on the array module `xp`, so both run
the same code. Not responsible for: colour conversion (a gray model gets Mono8 frames, an RGB model
RGB8 frames; a mismatch is a configuration error, not something to paper over), or running a model.

Resize convention: half-pixel centres, no antialiasing, edge clamping — the same as
`torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)` and
OpenCV's `INTER_LINEAR` (up to OpenCV's fixed-point rounding). Training must use the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from workers.model_meta import ModelMeta

# Arrays may be numpy.ndarray or cupy.ndarray; typing them precisely would need CuPy's stubs.
Array = Any


def _axis_weights(n_in: int, n_out: int, xp: ModuleType) -> tuple[Array, Array, Array]:
    """Source indices (i0, i1) and weight of i1 for each output position along one axis."""
    scale = n_in / n_out
    src = (xp.arange(n_out, dtype=xp.float64) + 0.5) * scale - 0.5
    # Negative source positions clamp to the first pixel (as torch and OpenCV do).
    src = xp.maximum(src, 0.0)
    i0 = xp.minimum(xp.floor(src).astype(xp.int64), n_in - 1)
    i1 = xp.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0).astype(xp.float32)
    return i0, i1, w1


def resize_bilinear(batch: Array, out_h: int, out_w: int, xp: ModuleType = np) -> Array:
    """Resize (N, H, W) or (N, H, W, C) to (N, out_h, out_w[, C]) as float32.

    Separable: interpolate rows, then columns; same result as the 2-D formula up to float rounding,
    at a fraction of the gathers.
    """
    n_h, n_w = batch.shape[1], batch.shape[2]
    x = batch.astype(xp.float32, copy=False)
    if (n_h, n_w) == (out_h, out_w):
        return x
    # Extra trailing axes (channels) broadcast against the per-position weights.
    tail = (1,) * (x.ndim - 3)
    y0, y1, wy = _axis_weights(n_h, out_h, xp)
    wy = wy.reshape((1, out_h, 1, *tail))
    x = x[:, y0] * (1.0 - wy) + x[:, y1] * wy
    x0, x1, wx = _axis_weights(n_w, out_w, xp)
    wx = wx.reshape((1, 1, out_w, *tail))
    return x[:, :, x0] * (1.0 - wx) + x[:, :, x1] * wx


def check_frame(shape: tuple[int, ...], meta: ModelMeta) -> None:
    """Raise ValueError when a frame of `shape` cannot feed this model (colour or ROI mismatch)."""
    if meta.color == "gray" and not (len(shape) == 2 or (len(shape) == 3 and shape[2] == 1)):
        raise ValueError(f"model {meta.version} expects Mono8 (H, W) frames, got shape {shape}")
    if meta.color == "rgb" and not (len(shape) == 3 and shape[2] == 3):
        raise ValueError(f"model {meta.version} expects RGB8 (H, W, 3) frames, got shape {shape}")
    if meta.roi is not None:
        x, y, w, h = meta.roi
        if x + w > shape[1] or y + h > shape[0]:
            raise ValueError(
                f"model {meta.version} ROI [x={x}, y={y}, w={w}, h={h}] exceeds the {shape[1]}x{shape[0]} frame"
            )


def preprocess(frames: Sequence[Array], meta: ModelMeta, xp: ModuleType = np) -> Array:
    """Turn uint8 camera frames (all the same shape) into the model's (N, 3, H, W) float32 input.

    `xp` is the array module (numpy or cupy); frames are moved onto it with `xp.asarray`.
    Raises ValueError for an empty batch, wrong dtype, mixed shapes, or a colour/ROI mismatch.
    """
    if len(frames) == 0:
        raise ValueError("preprocess needs at least one frame")
    shape = tuple(frames[0].shape)
    for f in frames:
        if f.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {f.dtype}")
        if tuple(f.shape) != shape:
            raise ValueError(f"all frames in a batch must have one shape, got {shape} and {tuple(f.shape)}")
    check_frame(shape, meta)
    batch = xp.stack([xp.asarray(f) for f in frames])
    if meta.color == "gray" and batch.ndim == 4:
        batch = batch[..., 0]
    if meta.roi is not None:
        x, y, w, h = meta.roi
        batch = batch[:, y : y + h, x : x + w]
    resized = resize_bilinear(batch, meta.height, meta.width, xp)
    # (pixel / 255 - mean) / std folded into one multiply-add per element.
    scale = xp.asarray([1.0 / (255.0 * s) for s in meta.std], dtype=xp.float32).reshape(1, 3, 1, 1)
    offset = xp.asarray([m / s for m, s in zip(meta.mean, meta.std, strict=True)], dtype=xp.float32)
    offset = offset.reshape(1, 3, 1, 1)
    # Gray: resize one plane and let broadcasting make the 3 channels (cheaper than resizing 3).
    planes = resized[:, None] if meta.color == "gray" else resized.transpose(0, 3, 1, 2)
    return xp.ascontiguousarray(planes * scale - offset, dtype=xp.float32)
