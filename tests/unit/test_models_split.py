"""How training shares out a dataset's images: which train the network, which stop its training,
which calibrate the threshold (models.train.split_data); and when it stops (stop_early)."""

from __future__ import annotations

import numpy as np
import pytest

from models.train import NET_GOODS, split_data, stop_early


def _split(per_class: int, good: int, classes: int = 3):
    labels = np.concatenate([np.zeros(good, int), *[np.full(per_class, c) for c in range(1, classes + 1)]])
    split = split_data(labels, 0.2, np.random.default_rng(0))
    net_goods = int((labels[split.train] == 0).sum())
    stop_goods = int((labels[split.val] == 0).sum())
    return labels, split, net_goods, stop_goods


@pytest.mark.parametrize(
    ("per_class", "good", "net", "stop"),
    [
        (300, 4800, 480, 180),  # twice the 240 training images of the largest class
        (100, 3200, 160, 60),
        (20, 400, NET_GOODS[0], 25),  # a few images per class: still enough good ones to learn from
        (1000, 6000, NET_GOODS[1], 600),  # the cap keeps training time bounded
    ],
)
def test_the_network_learns_from_twice_the_largest_class_and_every_other_good_image_calibrates(
    per_class: int, good: int, net: int, stop: int
) -> None:
    labels, split, net_goods, stop_goods = _split(per_class, good)
    assert (net_goods, stop_goods) == (net, stop)
    assert len(split.calibration) == good - net - stop and (labels[split.calibration] == 0).all()
    everything = np.concatenate([split.train, split.val, split.calibration])
    assert sorted(everything) == list(range(len(labels)))  # each image used once, none lost


def test_training_stops_early_only_in_the_second_half_of_its_rounds() -> None:
    # While the learning rate is high, four rounds without improvement say nothing yet.
    assert not stop_early(done=6, rounds=20, stale=4, patience=4)
    assert not stop_early(done=6, rounds=15, stale=5, patience=4)
    assert stop_early(done=7, rounds=15, stale=4, patience=4)
    assert not stop_early(done=12, rounds=15, stale=3, patience=4)
    assert stop_early(done=1, rounds=1, stale=1, patience=1)
