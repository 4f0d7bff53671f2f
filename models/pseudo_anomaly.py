"""Pseudo-anomalies: generic local flaws painted on good training images, so the network learns to
notice any local departure from the good surface, not only the defect types it has labels for.

Why: trained on three defect types, the network's features become blind to what is not like them;
a dent or a chip then sits inside the good parts' feature cloud and the anomaly score cannot see
it. Painting random, shapeless flaws on good images (in the spirit of DRAEM and CutPaste) and asking
the network to find them (its defect map; the classifier does not learn from these images) keeps
its features sensitive to local change of any kind.

The flaws are deliberately generic, built from what any surface flaw does to an image, never from a
known defect's shape: a region (a smooth random blob, or a thin random curve) whose pixels are
brightened or darkened, shaded across (one flank lit, one dark: a relief), smoothed (texture lost),
or replaced by the same surface from elsewhere (texture out of place). Contrast is set against the
image's own spread, from 1x (barely visible) to 4x.

What it does not: anything at inference; pseudo-anomalies exist in training only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy import ndimage

KINDS = ("offset", "shading", "smooth", "transplant")
_CONTRAST = (1.0, 4.0)  # flaw amplitude in units of the image's standard deviation
_AREA = (0.002, 0.03)  # blob area as a fraction of the image
_MASK_LEVEL = 0.25  # a pixel is defective where the flaw has a quarter of its strength (as in the masks)


def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def gaussian_blur(plane: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) planes (kernel +-2.5 sigma), edges reflected."""
    k = _gauss_kernel(sigma)
    r = len(k) // 2
    y = F.pad(plane[:, None], (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    return F.conv2d(y, k.view(1, 1, -1, 1))[:, 0]


def _blob(h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """A soft random blob (H, W) in 0..1: a smoothed noise field's top quantile around one seed point."""
    sigma = float(torch.empty(1).uniform_(2.0, 8.0, generator=gen))
    field = gaussian_blur(torch.randn(1, h, w, generator=gen), sigma)[0]
    cy, cx = (int(torch.randint(8, n - 8, (1,), generator=gen)) for n in (h, w))
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    # Weigh the field towards one point so the flaw is one region, not many scattered ones.
    field = field / field.std() - ((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (3 * sigma) ** 2)
    area = float(torch.empty(1).uniform_(*_AREA, generator=gen))
    level = torch.quantile(field.flatten(), 1.0 - area)
    regions, _ = ndimage.label((field >= level).numpy())
    peak = regions.flat[int(field.argmax())]
    one = torch.from_numpy(regions == peak).float()  # only the region around the peak: one flaw
    return gaussian_blur(one[None], 0.8)[0].clamp(0, 1)


def _curve(h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """A soft thin random curve (H, W) in 0..1, 1-3 px wide, 15-60 px long."""
    width = float(torch.empty(1).uniform_(0.6, 1.5, generator=gen))
    length = float(torch.empty(1).uniform_(15.0, 60.0, generator=gen))
    y, x = (float(torch.empty(1).uniform_(10, n - 10, generator=gen)) for n in (h, w))
    heading = float(torch.empty(1).uniform_(0, 2 * math.pi, generator=gen))
    turn = float(torch.empty(1).uniform_(-0.08, 0.08, generator=gen))
    points = []
    for _ in range(int(length)):
        points.append((y, x))
        heading += turn + 0.05 * float(torch.randn(1, generator=gen))
        y, x = min(max(y + math.sin(heading), 1), h - 2), min(max(x + math.cos(heading), 1), w - 2)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    p = torch.tensor(points)
    d2 = torch.full((h, w), float("inf"))
    for py, px in p[:: max(1, len(p) // 40)].tolist():  # ~40 samples suffice for a 1 px step curve
        d2 = torch.minimum(d2, (yy - py) ** 2 + (xx - px) ** 2)
    return torch.exp(-d2 / (2 * width**2))


def paint(image: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) image in 0..1 -> (image with one pseudo-anomaly, its mask (H, W) of 0/1)."""
    _, h, w = image.shape
    alpha = _blob(h, w, gen) if float(torch.rand(1, generator=gen)) < 0.7 else _curve(h, w, gen)
    kind = KINDS[int(torch.randint(len(KINDS), (1,), generator=gen))]
    amplitude = float(torch.empty(1).uniform_(*_CONTRAST, generator=gen)) * float(image.std().clamp(min=0.02))
    sign = 1.0 if float(torch.rand(1, generator=gen)) < 0.5 else -1.0
    if kind == "offset":
        out = image + sign * amplitude * alpha
    elif kind == "shading":
        # A relief: the flaw's gradient along a random light direction, scaled to the amplitude.
        gy, gx = torch.gradient(gaussian_blur(alpha[None], 2.0)[0])
        angle = float(torch.empty(1).uniform_(0, 2 * math.pi, generator=gen))
        relief = math.cos(angle) * gx + math.sin(angle) * gy
        relief = relief / relief.abs().max().clamp(min=1e-6)
        out = image + amplitude * relief
        alpha = (relief.abs() >= _MASK_LEVEL).float() * relief.abs()
    elif kind == "smooth":
        out = image + alpha * (gaussian_blur(image, 3.0) - image) + sign * 0.5 * amplitude * alpha
    else:
        shift = tuple(int(torch.randint(16, n - 16, (1,), generator=gen)) for n in (h, w))
        donor = torch.rot90(torch.roll(image, shift, dims=(-2, -1)), int(torch.randint(1, 4, (1,), generator=gen)),
                            dims=(-2, -1))  # fmt: skip
        out = image + alpha * (donor - image) + sign * 0.5 * amplitude * alpha
    return out.clamp(0.0, 1.0), (alpha >= _MASK_LEVEL).float()
