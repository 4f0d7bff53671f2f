"""Test-time views (net.TEST_VIEWS): a model with several views says what the mean over its views
says, with every defect map turned back to the part's own orientation."""

from __future__ import annotations

import copy

import pytest
import torch

from models.net import TEST_VIEWS, Inspector


def _inspector(views: int) -> Inspector:
    torch.manual_seed(0)
    model = Inspector(3, pretrained=True, views=views).eval()  # ImageNet features: views differ
    for layer in (model.net.classifier[1], model.net.map_out):  # zero at the start of training: opinions
        torch.nn.init.normal_(layer.weight, std=0.01)
    # A decision that weighs both signals and an anomaly map (no masks), so every output depends on
    # the view-averaging: the map on the distances, the score on both signals. Centres near these
    # inputs' signals keep the fused z near the cut, where the score is not squashed flat.
    for name, value in (("anomaly_center", 9.0), ("class_center", 0.5), ("cut", 0.3), ("uses_map", 1.0)):
        getattr(model.decision, name).fill_(value)
    model.learnt_map.fill_(0.0)
    return model


def test_every_view_has_its_way_back() -> None:
    x = torch.randn(2, 3, 8, 8)
    for turn, back in TEST_VIEWS:
        assert torch.equal(back(turn(x)), x)
    # The quarter turn is written without rot90 (ONNX has none) and must be one.
    assert torch.equal(TEST_VIEWS[3][0](x), torch.rot90(x, 1, (-2, -1)))


def test_several_views_give_the_mean_of_what_each_view_says() -> None:
    many = _inspector(len(TEST_VIEWS))
    one = copy.deepcopy(many)
    one.views = 1
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        probs, maps, score = many(x)
        each = [one.signals(turn(x)) for turn, _ in TEST_VIEWS]
        zs = []
        for _, _, learned_logit, log_distance in each:
            d = 2.0 * one.decision.score(learned_logit, log_distance) - 1.0  # the fused z minus the cut
            zs.append(d / (1.0 - d.abs()))
    mean_z = torch.stack(zs).mean(dim=0)
    d = 2.0 * score - 1.0
    assert d / (1.0 - d.abs()) == pytest.approx(mean_z, abs=1e-4)
    assert probs == pytest.approx(torch.stack([e[0] for e in each]).mean(dim=0), abs=1e-6)
    back_maps = [back(e[1]) for (_, back), e in zip(TEST_VIEWS, each, strict=True)]
    assert torch.allclose(maps, torch.stack(back_maps).mean(dim=0), atol=1e-6)


def test_views_outside_the_known_ones_are_refused() -> None:
    with pytest.raises(ValueError, match=r"views must be 1\.\.4"):
        Inspector(2, pretrained=False, views=5)

