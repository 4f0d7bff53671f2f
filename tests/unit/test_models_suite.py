"""The held-out suite's visibility scale: contrast-to-noise against the good twin, size, bands."""

from __future__ import annotations

import numpy as np
import pytest

from models import suite, synthetic


def test_visibility_is_the_defects_contrast_over_the_surfaces_own_variation() -> None:
    rng = np.random.default_rng(0)
    twin = rng.normal(100.0, 4.0, (64, 64)).astype(np.float32)  # a surface varying by 4 grey levels
    mask = np.zeros((64, 64), np.uint8)
    mask[30:34, 20:44] = 255
    frame = twin + 12.0 * (mask > 0)  # 12 grey levels brighter: three times the variation
    cnr, area = suite.visibility(frame, twin, mask)
    assert cnr == pytest.approx(3.0, rel=0.1) and area == 96
    assert suite.band(cnr * 0.9, area) == "visible" and suite.band(cnr * 1.1, area) == "clear"
    assert suite.band(0.8, area) == "faint" and suite.band(10.0, 8) == "faint"  # too faint, or under 3x3 px


def test_the_suite_renders_every_type_on_every_texture_with_its_visibility() -> None:
    s = suite.render_suite(seed=123, good_per_texture=3, per_type=4)
    assert len(s.frames) == 3 * (3 + 4 * (len(synthetic.ALL_CLASSES) - 1))
    defect = s.kinds != "good"
    assert (s.cnr[defect] > 0).all() and (s.area[defect] > 0).all() and (s.cnr[~defect] == 0).all()
    assert set(s.textures) == set(synthetic.SURFACES)


def test_report_reads_detection_per_texture_band_and_trained_or_unseen() -> None:
    s = suite.render_suite(seed=124, good_per_texture=20, per_type=3)
    scores = np.where(s.kinds == "good", 0.1, 0.9)  # a perfect model
    rep = suite.report(s, scores, 0.5, trained=synthetic.CLASSES[1:])
    own = rep["cuts"]["own_threshold"]
    assert own["false_rejects"]["all"]["rate"] == 0.0
    assert own["detection"]["all"]["unseen"]["visible+clear"]["rate"] == 1.0
    assert own["detection"]["brick"]["trained"]["visible+clear"]["n"] > 0


def test_spread_gives_each_models_detection_and_their_mean_min_and_max() -> None:
    s = suite.render_suite(seed=125, good_per_texture=30, per_type=3)
    good = s.kinds == "good"
    perfect = suite.report(s, np.where(good, 0.1, 0.9), 0.5, trained=synthetic.CLASSES[1:])
    blind = suite.report(s, np.where(good, 0.1, 0.05), 0.5, trained=synthetic.CLASSES[1:])  # catches nothing
    out = suite.spread([perfect, blind], band="visible+clear")
    for group in ("trained", "unseen"):
        for texture in (*synthetic.SURFACES, "all"):
            assert out[group][texture] == {"each": [1.0, 0.0], "mean": 0.5, "min": 0.0, "max": 1.0}
