"""The trainer's augmentation moves an image and its defect map together, and paints pseudo-anomalies
on good images only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.augmentation import Augmentation
from models.net import MAP_STRIDE
from models.train import augment

STILL = Augmentation(dihedral=False, brightness=0.0, contrast=0.0, noise=0.0, pseudo_anomalies=0.0)


def _part_with_a_defect(y: int, x: int) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.full((1, 128, 128), 60, dtype=torch.uint8)
    image[0, y : y + 5, x : x + 5] = 250
    cells = F.max_pool2d((image[None].float() > 200).float(), MAP_STRIDE)[0]
    return image, cells


def test_shifted_and_turned_images_keep_their_defect_inside_the_marked_cells() -> None:
    gen = torch.Generator().manual_seed(0)
    moving = Augmentation(**{**STILL.__dict__, "dihedral": True, "shift_px": 6, "rotation_deg": 10.0})
    for y, x in ((20, 20), (60, 37), (99, 70), (44, 110)):  # corners of cells and their middles
        image, cells = _part_with_a_defect(y, x)
        for _ in range(8):
            x_in, m, _ = augment(image.repeat(4, 1, 1), cells.repeat(4, 1, 1), torch.ones(4, dtype=torch.long),
                                 moving, gen)  # fmt: skip
            bright = F.max_pool2d((x_in[:, :1] > 1.5).float(), MAP_STRIDE)[:, 0]  # the defect's cells now
            assert bright.sum() > 0
            assert (m[bright > 0] == 1).all()  # every cell the moved defect touches is marked


def test_pseudo_anomalies_go_on_good_images_only_and_bring_their_mask() -> None:
    gen = torch.Generator().manual_seed(1)
    images = (90 + torch.randint(0, 30, (8, 128, 128), generator=gen)).byte()
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    maps = torch.zeros(8, 16, 16)
    every = Augmentation(**{**STILL.__dict__, "pseudo_anomalies": 0.8})
    painted = torch.zeros(8)
    for _ in range(10):
        _, m, pseudo = augment(images, maps, labels, every, gen)
        assert not pseudo[labels != 0].any()
        assert (m[pseudo].flatten(1).amax(1) == 1).all() and (m[~pseudo] == 0).all()
        painted += pseudo.float()
    assert 4 * 10 * 0.6 < painted.sum() < 4 * 10 * 1.0  # about 80 % of the good ones
