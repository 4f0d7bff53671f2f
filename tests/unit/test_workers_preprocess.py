"""Preprocessing against straightforward references: a per-pixel bilinear loop, torch's
`interpolate(align_corners=False)`, and crop/normalise written out by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.model_meta import ModelMeta
from workers.preprocess import preprocess, resize_bilinear

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def make_meta(
    *, size: tuple[int, int] = (16, 16), color: str = "gray", roi: tuple[int, int, int, int] | None = None
) -> ModelMeta:
    return ModelMeta(
        source="test",
        classes=("good", "bad"),
        height=size[0],
        width=size[1],
        channels=3,
        color=color,  # type: ignore[arg-type]
        mean=MEAN,
        std=STD,
        roi=roi,
        threshold=0.5,
        version="t",
    )


def reference_resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear, half-pixel centres, edge clamp; one output pixel at a time, in float64."""
    h, w = img.shape[:2]
    out = np.zeros((out_h, out_w, *img.shape[2:]), dtype=np.float64)
    for oy in range(out_h):
        sy = max((oy + 0.5) * h / out_h - 0.5, 0.0)
        y0 = min(int(sy), h - 1)
        y1 = min(y0 + 1, h - 1)
        fy = sy - y0
        for ox in range(out_w):
            sx = max((ox + 0.5) * w / out_w - 0.5, 0.0)
            x0 = min(int(sx), w - 1)
            x1 = min(x0 + 1, w - 1)
            fx = sx - x0
            top = (1 - fx) * img[y0, x0].astype(np.float64) + fx * img[y0, x1]
            bottom = (1 - fx) * img[y1, x0].astype(np.float64) + fx * img[y1, x1]
            out[oy, ox] = (1 - fy) * top + fy * bottom
    return out


def reference_preprocess(frame: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """One frame → (3, H, W), the obvious way."""
    if meta.roi is not None:
        x, y, w, h = meta.roi
        frame = frame[y : y + h, x : x + w]
    planes = [frame] * 3 if frame.ndim == 2 else [frame[..., c] for c in range(3)]
    out = np.stack([reference_resize(p, meta.height, meta.width) for p in planes])
    for c in range(3):
        out[c] = (out[c] / 255.0 - meta.mean[c]) / meta.std[c]
    return out


rng = np.random.default_rng(1)


def rand_frame(h: int, w: int, c: int | None = None) -> np.ndarray:
    shape: tuple[int, ...] = (h, w) if c is None else (h, w, c)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize(("src", "dst"), [((40, 30), (16, 16)), ((7, 9), (16, 20)), ((16, 16), (16, 16))])
@pytest.mark.parametrize("color", ["gray", "rgb"])
def test_matches_reference(src: tuple[int, int], dst: tuple[int, int], color: str) -> None:
    meta = make_meta(size=dst, color=color)
    frames = [rand_frame(*src, None if color == "gray" else 3) for _ in range(2)]
    out = preprocess(frames, meta)
    assert out.shape == (2, 3, *dst) and out.dtype == np.float32 and out.flags.c_contiguous
    for i, f in enumerate(frames):
        np.testing.assert_allclose(out[i], reference_preprocess(f, meta), atol=1e-4)


@pytest.mark.parametrize(("src", "dst"), [((160, 160), (128, 128)), ((50, 70), (128, 96)), ((33, 17), (8, 5))])
def test_resize_matches_torch_bilinear(src: tuple[int, int], dst: tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    batch = np.stack([rand_frame(*src) for _ in range(3)])
    ours = resize_bilinear(batch, *dst)
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(batch.astype(np.float32))[:, None], size=dst, mode="bilinear", align_corners=False
    )[:, 0].numpy()
    # Pixel units (0..255): torch computes source positions in float32, we in float64.
    np.testing.assert_allclose(ours, theirs, atol=5e-3)


def test_roi_is_cropped_before_resize() -> None:
    frame = np.zeros((160, 160), np.uint8)
    frame[20:100, 30:90] = rng.integers(0, 256, size=(80, 60), dtype=np.uint8)
    meta = make_meta(size=(32, 24), roi=(30, 20, 60, 80))
    out = preprocess([frame], meta)[0]
    np.testing.assert_allclose(out, reference_preprocess(frame, meta), atol=1e-4)
    # Same as handing over the crop itself with no ROI.
    plain = preprocess([np.ascontiguousarray(frame[20:100, 30:90])], make_meta(size=(32, 24)))[0]
    np.testing.assert_allclose(out, plain, atol=1e-6)


def test_gray_is_replicated_into_three_normalised_channels() -> None:
    frame = np.full((16, 16), 200, np.uint8)
    out = preprocess([frame], make_meta())[0]
    for c in range(3):
        np.testing.assert_allclose(out[c], (200 / 255 - MEAN[c]) / STD[c], rtol=1e-5)


def test_gray_accepts_single_channel_axis() -> None:
    frame = rand_frame(20, 20)
    a = preprocess([frame], make_meta())
    b = preprocess([frame[..., None]], make_meta())
    np.testing.assert_array_equal(a, b)


def test_rgb_keeps_channel_order() -> None:
    frame = np.zeros((16, 16, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 120, 250
    out = preprocess([frame], make_meta(color="rgb"))[0]
    for c, v in enumerate((10, 120, 250)):
        np.testing.assert_allclose(out[c], (v / 255 - MEAN[c]) / STD[c], rtol=1e-5)


@pytest.mark.parametrize(
    ("frames", "meta", "match"),
    [
        ([], make_meta(), "at least one frame"),
        ([np.zeros((16, 16), np.uint16)], make_meta(), "uint8"),
        ([np.zeros((16, 16), np.uint8), np.zeros((17, 16), np.uint8)], make_meta(), "one shape"),
        ([np.zeros((16, 16, 3), np.uint8)], make_meta(), "expects Mono8"),
        ([np.zeros((16, 16), np.uint8)], make_meta(color="rgb"), "expects RGB8"),
        (
            [np.zeros((100, 100), np.uint8)],
            make_meta(roi=(50, 0, 60, 10)),
            "ROI .* exceeds the 100x100 frame",
        ),
    ],
)
def test_rejects_frames_the_model_cannot_take(frames: list[np.ndarray], meta: ModelMeta, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        preprocess(frames, meta)


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    oh=st.integers(1, 24),
    ow=st.integers(1, 24),
    rgb=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_output_is_a_convex_combination_of_inputs(h: int, w: int, oh: int, ow: int, rgb: bool, seed: int) -> None:
    """Bilinear weights are non-negative and sum to 1: every output lies within the input's range."""
    g = np.random.default_rng(seed)
    frame = g.integers(0, 256, size=(h, w, 3) if rgb else (h, w), dtype=np.uint8)
    meta = make_meta(size=(oh, ow), color="rgb" if rgb else "gray")
    out = preprocess([frame], meta)
    assert out.shape == (1, 3, oh, ow)
    planes: list[Any] = [frame[..., c] for c in range(3)] if rgb else [frame] * 3
    for c in range(3):
        lo = (planes[c].min() / 255 - MEAN[c]) / STD[c]
        hi = (planes[c].max() / 255 - MEAN[c]) / STD[c]
        assert lo - 1e-4 <= out[0, c].min() and out[0, c].max() <= hi + 1e-4
