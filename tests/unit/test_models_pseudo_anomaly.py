"""Pseudo-anomalies: a visible flaw inside its mask, the surface untouched outside, reproducible."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from models import pseudo_anomaly, synthetic


def _surfaces(n: int) -> list[torch.Tensor]:
    frames, _, _ = synthetic.render_set(5, {"good": n})
    return [torch.from_numpy(f[16:144, 16:144]).float()[None] / 255.0 for f in frames]


def test_each_flaw_is_visible_inside_its_mask_and_leaves_the_rest_of_the_surface_alone() -> None:
    gen = torch.Generator().manual_seed(0)
    for image in _surfaces(40):
        painted, mask = pseudo_anomaly.paint(image, gen)
        on = mask.numpy() > 0
        assert 3 <= on.sum() <= 0.1 * on.size  # a local flaw, never the whole part
        change = (painted - image)[0].abs().numpy()
        # One flaw: beyond its soft edge the surface is as it was, to a grey level.
        assert change[~ndimage.binary_dilation(on, iterations=16)].max() < 1 / 255
        # Inside, the flaw is at least about the image's own spread (or clipped at black/white).
        assert change[on].mean() > 0.3 * float(image.std())


def test_painting_is_reproducible_from_the_generator() -> None:
    image = _surfaces(1)[0]
    a = pseudo_anomaly.paint(image, torch.Generator().manual_seed(3))
    b = pseudo_anomaly.paint(image, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], image)
    assert np.isfinite(a[0].numpy()).all() and 0.0 <= float(a[0].min()) and float(a[0].max()) <= 1.0
