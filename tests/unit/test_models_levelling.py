"""Levelled inputs (models.net.level_and_contrast): a part lit brighter, from one side, or with more
texture contrast is the same part to the network; a flaw on it is not levelled away."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import synthetic
from models.net import LEVELLED_RMS, Inspector, level_and_contrast, normalize
from models.train import load_checkpoint


def _surface(seed: int = 3) -> torch.Tensor:
    frame, _ = synthetic.render_frame(np.random.default_rng(seed), "good", 0.5, ("grass",))
    x, y, w, h = synthetic.ROI
    return torch.from_numpy(frame[y : y + h, x : x + w].astype(np.float32))


def _relit(levels: torch.Tensor, offset: float, slope_y: float, slope_x: float, gain: float) -> torch.Tensor:
    h, w = levels.shape
    ramp = slope_y * torch.linspace(-1, 1, h)[:, None] + slope_x * torch.linspace(-1, 1, w)[None, :]
    return (levels - levels.mean()) * gain + levels.mean() + offset + ramp


def test_brightness_light_gradient_and_contrast_are_taken_out() -> None:
    levels = _surface()
    a = level_and_contrast(normalize(levels[None] / 255.0))
    b = level_and_contrast(normalize(_relit(levels, 30.0, -20.0, 15.0, 1.8)[None] / 255.0))
    assert torch.allclose(a, b, atol=1e-4)
    assert float(a.pow(2).mean().sqrt()) == pytest.approx(LEVELLED_RMS, rel=1e-4)


def test_a_flaw_keeps_its_contrast_to_the_surface() -> None:
    levels = _surface()
    flawed = levels.clone()
    flawed[60:70, 60:70] -= 40.0  # a dark chip, about 3x the texture's spread
    a = level_and_contrast(normalize(levels[None] / 255.0))[0, 0]
    b = level_and_contrast(normalize(flawed[None] / 255.0))[0, 0]
    inside = (a - b)[60:70, 60:70].mean() / a.std()
    outside = (a - b)[:40, :40].abs().mean() / a.std()
    assert inside > 2.0, "the flaw must stand out of the levelled surface as it did before"
    assert outside < 0.1 * inside


def test_a_blank_image_is_not_blown_up() -> None:
    blank = normalize(torch.full((1, 32, 32), 0.5))
    out = level_and_contrast(blank + 1e-4 * torch.randn_like(blank))
    assert torch.isfinite(out).all() and float(out.abs().max()) < 0.1


def test_the_network_sees_a_relit_part_as_the_same_part() -> None:
    model = Inspector(2, pretrained=True).eval()  # ImageNet features: random ones are all near 0
    levels = _surface()
    pair = torch.stack([levels, _relit(levels, -25.0, 10.0, -18.0, 0.6)]) / 255.0
    with torch.no_grad():
        _, _, cells = model.net.forward_with_features(normalize(pair))
    scale = float(cells.abs().mean())
    assert float((cells[0] - cells[1]).abs().max()) < 1e-3 * scale


@pytest.mark.parametrize(("stored", "expected"), [(None, False), (True, True), (False, False)])
def test_checkpoints_say_whether_their_inputs_were_levelled(tmp_path, stored, expected) -> None:
    model = Inspector(2, pretrained=False)
    ckpt = {"state_dict": model.state_dict(), "classes": ["good", "scratch"], "modes": 1, "views": 1}
    if stored is not None:
        ckpt["levelled"] = stored
    torch.save(ckpt, tmp_path / "model.pt")
    loaded, _ = load_checkpoint(tmp_path / "model.pt")
    assert loaded.net.levelled is expected
