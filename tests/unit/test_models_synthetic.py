"""The synthetic frame generator: determinism, exact masks, and a class-blind outside of the ROI."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from models.dataset import list_dataset
from models.synthetic import ALL_CLASSES, CLASSES, FRAME_SHAPE, ROI, UNSEEN, make_dataset, render_frame

X, Y, W, H = ROI


def _inside_roi() -> np.ndarray:
    inside = np.zeros(FRAME_SHAPE, bool)
    inside[Y : Y + H, X : X + W] = True
    return inside


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_same_seed_same_frame(cls: str) -> None:
    a = render_frame(np.random.default_rng(7), cls, 0.3)
    b = render_frame(np.random.default_rng(7), cls, 0.3)
    c = render_frame(np.random.default_rng(8), cls, 0.3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@settings(max_examples=40, deadline=None, database=None)
@given(seed=st.integers(0, 2**32 - 1), cls=st.integers(0, len(ALL_CLASSES) - 1), difficulty=st.floats(0, 1))
def test_mask_marks_defects_only_inside_roi(seed: int, cls: int, difficulty: float) -> None:
    frame, mask = render_frame(np.random.default_rng(seed), cls, difficulty)
    assert frame.shape == mask.shape == FRAME_SHAPE
    assert frame.dtype == mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    assert mask.any() == (cls != 0)
    assert not mask[~_inside_roi()].any()


@settings(max_examples=20, deadline=None, database=None)
@given(seed=st.integers(0, 2**32 - 1), difficulty=st.floats(0, 1))
def test_outside_roi_does_not_depend_on_class(seed: int, difficulty: float) -> None:
    frames = [render_frame(np.random.default_rng(seed), c, difficulty)[0] for c in ALL_CLASSES]
    outside = ~_inside_roi()
    for f in frames[1:]:
        assert np.array_equal(f[outside], frames[0][outside])


def test_mask_is_where_the_defect_changed_the_frame() -> None:
    # Same seed, so "good" and the defect frame share surface and noise: the difference is the defect.
    good, _ = render_frame(np.random.default_rng(3), 0)
    for cls in ALL_CLASSES[1:]:
        frame, mask = render_frame(np.random.default_rng(3), cls)
        changed = frame != good
        assert changed[mask > 0].mean() > 0.9
        # Only the soft, anti-aliased rim (below the mask level) may change outside the mask; a dent
        # is shading with no edge at all, so its rim is wider.
        rim = 10 if cls == "dent" else 3
        assert not changed[~ndimage.binary_dilation(mask > 0, iterations=rim)].any()


def test_make_dataset_layout_and_determinism(tmp_path) -> None:
    a = make_dataset(tmp_path / "a", per_class=2, seed=11)
    b = make_dataset(tmp_path / "b", per_class=2, seed=11)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert [str(p) for p in files] == sorted(
        [f"{c}/{i:04d}.png" for c in CLASSES for i in range(2)]
        + [f"ground_truth/{c}/{i:04d}_mask.png" for c in CLASSES[1:] for i in range(2)]
    )
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    mask = np.asarray(Image.open(a / "ground_truth" / "crack" / "0000_mask.png"))
    assert mask.shape == FRAME_SHAPE and mask.max() == 255
    assert list_dataset(a).roi == ROI  # dataset.json tells training where the part lies


def test_make_dataset_classes_and_good_count(tmp_path) -> None:
    root = make_dataset(tmp_path / "unseen", per_class=2, seed=5, classes=("good", *UNSEEN), good=3)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["chip", "dent", "good", "ground_truth"]
    assert len(list((root / "good").glob("*.png"))) == 3
    assert len(list((root / "ground_truth" / "dent").glob("*_mask.png"))) == 2


def test_unknown_class_is_refused() -> None:
    with pytest.raises(ValueError, match="defect_class must be one of"):
        render_frame(np.random.default_rng(0), "dust")
    with pytest.raises(ValueError, match=r"defect_class must be in 0\.\.5"):
        render_frame(np.random.default_rng(0), 6)
