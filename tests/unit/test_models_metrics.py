"""The evaluation's arithmetic: AUROC and detection at a fixed false-reject rate, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.evaluate import auroc, detection_at_frr
from models.net import Decision, GoodFeatureModel

scores = st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 1.0]) | st.floats(0, 1), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None, database=None)
@given(neg=scores, pos=scores)
def test_auroc_is_the_probability_a_defect_outscores_a_good_part(neg: list[float], pos: list[float]) -> None:
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])
    assert auroc(np.array(neg), np.array(pos)) == pytest.approx(brute)


@settings(max_examples=200, deadline=None, database=None)
@given(good=scores, defect=scores, frr=st.sampled_from([0.0, 0.01, 0.1, 0.5]))
def test_detection_at_frr_keeps_the_budget_and_is_the_best_such_cut(good, defect, frr) -> None:
    g, d = np.array(good), np.array(defect)
    threshold, detection = detection_at_frr(g, d, frr)
    assert (g >= threshold).mean() <= frr
    assert detection == pytest.approx((d >= threshold).mean())
    # No lower cut among the good scores keeps the budget.
    assert all((g >= c).mean() > frr for c in np.unique(g) if c < threshold)


def test_good_feature_model_measures_distance_from_good_features() -> None:
    gen = torch.Generator().manual_seed(0)
    mixing = torch.randn(6, 6, generator=gen)
    good = torch.randn(20_000, 6, generator=gen) @ mixing + 3.0  # correlated, offset features
    model = GoodFeatureModel(6)
    model.fit(good, shrinkage=0.0)
    cells = lambda x: x.T.reshape(1, 6, -1, 1)  # noqa: E731  (N=1 image, one column of cells)
    d_good = model(cells(good[:2000]))
    assert d_good.mean().item() == pytest.approx(6.0, rel=0.1)  # chi-squared with 6 degrees of freedom
    # A shift of 3 standard deviations along the direction good parts vary least in: tiny in pixels,
    # yet as far (+9 on average) as 3 standard deviations along any other direction.
    _, sigma, vh = torch.linalg.svd(mixing)
    odd = good[:2000] + 3.0 * sigma[-1] * vh[-1]
    assert model(cells(odd)).mean().item() == pytest.approx(6.0 + 9.0, rel=0.1)


def test_decision_rejects_when_either_signal_reaches_its_limit() -> None:
    decision = Decision()
    decision.class_limit.fill_(0.2)
    decision.anomaly_limit.fill_(50.0)
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.95, 0.05], [0.0, 1.0]])
    distances = torch.tensor([10.0, 10.0, 60.0, 10.0]).view(4, 1, 1)
    score = decision(probs, distances)
    assert (score >= Decision.THRESHOLD).tolist() == [False, True, True, True]
    assert score.max() <= 1.0 and score.min() >= 0.0


@settings(max_examples=200, deadline=None, database=None)
@given(good=scores, rate=st.sampled_from([0.001, 0.005, 0.01, 0.05, 0.5]))
def test_limit_for_rate_bounds_a_new_good_parts_reject_chance(good: list[float], rate: float) -> None:
    from models.thresholds import limit_for_rate

    g = np.array(good)
    limit, holds = limit_for_rate(g, rate)
    rejected = int((g >= limit).sum())  # ties at the limit all count
    # A new exchangeable good score is among the `rejected` highest with chance rejected / (n + 1).
    assert rejected / (len(g) + 1) <= rate
    assert holds == ((len(g) + 1) * rate >= 1)
    lower = [c for c in np.unique(g) if c < limit]
    assert all((g >= c).sum() / (len(g) + 1) > rate for c in lower)  # and no lower cut would do


def test_calibration_with_a_realistic_validation_set_holds_the_budget_on_new_parts() -> None:
    from models.thresholds import limit_for_rate

    rng = np.random.default_rng(0)
    # 200 validation good parts per trial; the real rate is measured on 20 000 new ones.
    rates = []
    for _ in range(200):
        limit, holds = limit_for_rate(rng.random(200), 0.005)
        assert holds
        rates.append(1.0 - limit)  # the chance a new uniform score reaches the limit
    assert np.mean(rates) <= 0.005 + 1e-3
