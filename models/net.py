"""The inspection network and its input convention, shared by training and export.

What it does: `InspectionNet` = truncated EfficientNet-Lite0 backbone + a classification head
(good + defect classes) + a light per-pixel defect-map head at 1/8 resolution, and it exposes the
per-cell features that `GoodFeatureModel` compares with good parts' features (the anomaly score
that catches defect types never seen in training). `Decision` fuses the classifier's and the
anomaly signal into the one reject score the line compares with its threshold (models.fusion). `preprocess` turns
Mono8 or RGB8 camera frames into the normalized 3-channel tensor the network (and the ONNX model)
takes, with the runtime's own code.

What it does not: training, calibration or file I/O (see train.py and export.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.efficientnet_lite import EfficientNetLite0Features
from models.fusion import Fusion
from models.resolution import DEFAULT_SIDE
from workers.model_meta import Color, ModelMeta
from workers.preprocess import preprocess as runtime_preprocess
from workers.preprocess import resize_bilinear

INPUT_SIZE = DEFAULT_SIDE  # square network input by default (pixels; models.resolution); the synthetic ROI's size
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MAP_STRIDE = 8  # defect_map is INPUT_SIZE / 8 on a side

# Why cut after block 10 (end of stage 5, stride 16, 112 channels): defects are local, a few to a few
# tens of pixels, and stage-5 features already see ~100 px around each cell of a 128 px input. Stages
# 6-7 would reduce the image to 4x4 cells, hold ~75% of the parameters (18 MB -> 2.8 MB without them)
# and mostly encode ImageNet object semantics that do not transfer to surface defects.
LAST_BLOCK = 10
MAP_TAP = 4  # end of stage 3, stride 8: fine enough to localise a 1-2 px scratch to an 8 px cell
LAST_FROZEN_BLOCK = 2  # stem + blocks 0..2 keep their ImageNet weights (generic edges; saves ~1/3 of CPU time)


LEVEL_FLOOR = 0.02  # ~1 grey level in normalized units: a blank image's noise is not blown up
LEVELLED_RMS = 0.3
"""The spread every input is brought to (normalized units; ~17 grey levels): about what this
project's part images had before levelling, so the pretrained stem, its frozen batch norms and the
learning rate see the magnitudes they were tuned on. Measured at 1.0 (ImageNet's spread): the
validation loss jumped about and training kept a round-4 network (held-out suite, seed 0: 7-30
points worse than without levelling)."""


def level_and_contrast(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) normalized input -> the same with each channel's mean and linear illumination
    gradient removed and the image's remaining spread (one figure for all channels, so colours keep
    their balance) brought to LEVELLED_RMS. Why: good parts of one product come brighter or darker,
    lit from one side, with more or less texture contrast; a flaw is a local departure from the
    part's own surface. Without this, that good variation spreads the good parts' features and the
    network has to learn the invariance from a few hundred images. A defect covers a few % of the
    image, so it barely moves the fitted plane or the spread. What it gives up: a part that is wrong
    only as a whole (all too dark, no texture at all) looks good; the drift monitor
    (models.drift_reference) watches brightness and focus on the raw frames."""
    _, _, h, w = x.shape
    ys = torch.linspace(-1.0, 1.0, h, dtype=x.dtype, device=x.device).view(1, 1, h, 1)
    xs = torch.linspace(-1.0, 1.0, w, dtype=x.dtype, device=x.device).view(1, 1, 1, w)
    r = x - x.mean(dim=(2, 3), keepdim=True)
    # ys and xs are zero-mean and orthogonal on the grid, so the plane's slopes are projections.
    r = r - (r * ys).mean(dim=(2, 3), keepdim=True) / (ys * ys).mean() * ys
    r = r - (r * xs).mean(dim=(2, 3), keepdim=True) / (xs * xs).mean() * xs
    spread = (r * r).mean(dim=(1, 2, 3), keepdim=True).sqrt()
    return r * (LEVELLED_RMS / spread.clamp(min=LEVEL_FLOOR))


def map_peak(defect_logits: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) defect-map logits -> (N,) the map head's largest defect probability."""
    return torch.sigmoid(defect_logits.amax(dim=(1, 2, 3)))


class InspectionNet(nn.Module):
    """Input: (N, 3, S, S) normalized, S a multiple of 16 (128 by default). Output: (class logits
    (N, C), defect logits (N, 1, S/8, S/8)). `levelled`: inputs go through `level_and_contrast`
    first (every model trained since; older checkpoints were trained without it)."""

    def __init__(self, num_classes: int, pretrained: bool = True, levelled: bool = True) -> None:
        super().__init__()
        self.levelled = levelled
        self.backbone = EfficientNetLite0Features(last_block=LAST_BLOCK, taps=(MAP_TAP, LAST_BLOCK))
        if pretrained:
            self.backbone.load_pretrained()
        c8, c16 = self.backbone.tap_channels
        self.map_fine = nn.Conv2d(c8, 32, 1)
        self.map_coarse = nn.Conv2d(c16, 32, 1)
        self.map_out = nn.Conv2d(32, 1, 3, padding=1)
        # Max pooling alongside the average: a small defect barely moves the mean of 64 cells.
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * c16 + 1, num_classes))
        # Backbone activations reach tens; with default init the new heads start with huge logits
        # (initial loss ~4 instead of log C). Zero output layers start them at "no opinion".
        for layer in (self.classifier[1], self.map_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def frozen_modules(self) -> list[nn.Module]:
        return self.backbone.layers_through(LAST_FROZEN_BLOCK)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, defect_logits, _ = self.forward_with_features(x)
        return logits, defect_logits

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class logits, defect logits, cell features (N, c8 + c16, S/8, S/8) for the anomaly score)."""
        f8, f16 = self.backbone(level_and_contrast(x) if self.levelled else x)
        coarse = F.interpolate(self.map_coarse(f16), scale_factor=2.0, mode="nearest")
        defect_logits = self.map_out(F.relu(self.map_fine(f8) + coarse))
        # The strongest defect-map response is fed to the classifier, so the mask supervision helps
        # the decision directly and not only as an auxiliary signal (as a probability: raw logits are
        # unbounded and destabilise the first epochs).
        peak = map_peak(defect_logits)[:, None]
        pooled = torch.cat([f16.mean(dim=(2, 3)), f16.amax(dim=(2, 3)), peak], dim=1)
        # Fine and coarse features side by side per 8 px cell: fine ones see texture detail, coarse
        # ones the context that tells a defect from an unusual patch of surface.
        cells = torch.cat([f8, F.interpolate(f16, scale_factor=2.0, mode="nearest")], dim=1)
        return self.classifier(pooled), defect_logits, cells

    @property
    def cell_feature_dim(self) -> int:
        return sum(self.backbone.tap_channels)


@dataclass(frozen=True)
class Moments:
    """Count, sum and sum of outer products of feature vectors (float64)."""

    n: int
    total: torch.Tensor
    outer: torch.Tensor

    @staticmethod
    def of(x: torch.Tensor) -> Moments:
        x = x.double()
        return Moments(len(x), x.sum(0), x.T @ x)

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.total + other.total, self.outer + other.outer)

    def __sub__(self, other: Moments) -> Moments:
        return Moments(self.n - other.n, self.total - other.total, self.outer - other.outer)


class GoodFeatureModel(nn.Module):
    """Good parts' cell features as one Gaussian per mode (one for all positions: a surface texture
    has no preferred place). A product's good parts come in modes (surface finishes, variants) that
    one Gaussian would blur into one wide cloud, in which a defect hides; each image is measured
    against the mode nearest to its mean feature (standardized), and the output is each cell's
    squared Mahalanobis distance under that mode. Far means unlike any good surface of that kind,
    whatever the defect type.
    Limit: being the same everywhere, it cannot tell a feature that is missing or misplaced on a
    structured part (a hole, a print) from one in the right place; that needs a per-position model."""

    def __init__(self, dim: int, modes: int = 1) -> None:
        super().__init__()
        self.modes = modes
        self.register_buffer("mean", torch.zeros(modes, dim))
        self.register_buffer("whiten", torch.eye(dim).repeat(modes, 1, 1))  # W_k^T W_k = inverse covariance
        self.register_buffer("centroids", torch.zeros(modes, dim))  # modes' mean image features / scale
        self.register_buffer("scale", torch.ones(dim))

    @torch.no_grad()
    def fit(self, cells: torch.Tensor, shrinkage: float = 0.01) -> None:
        """`cells`: (N, D) feature vectors of good parts (one mode)."""
        self.fit_moments([Moments.of(cells)], shrinkage)

    @torch.no_grad()
    def set_modes(self, centroids: torch.Tensor, scale: torch.Tensor) -> None:
        """Mode centres in image-mean feature space divided by `scale` (see `mode_of`)."""
        self.centroids.copy_(centroids)
        self.scale.copy_(scale)

    @torch.no_grad()
    def fit_moments(self, per_mode: list[Moments], shrinkage: float = 0.01) -> None:
        """From the sums of good parts' cell features, per mode (so that leaving a fold of images out
        is a subtraction). Shrinkage towards a scaled identity keeps the inverse stable where a few
        feature directions hardly vary on good surfaces."""
        for k, m in enumerate(per_mode):
            if m.n < 2:
                raise ValueError(f"mode {k} of the good parts' model has {m.n} feature vectors")
            mean = m.total / m.n
            cov = (m.outer - m.n * torch.outer(mean, mean)) / max(m.n - 1, 1)
            cov += shrinkage * cov.diagonal().mean() * torch.eye(len(mean), dtype=cov.dtype)
            # cov = L L^T  =>  cov^-1 = L^-T L^-1, so W = L^-1 whitens.
            self.mean[k] = mean.float()
            self.whiten[k] = torch.linalg.inv(torch.linalg.cholesky(cov)).float()

    def mode_of(self, image_features: torch.Tensor) -> torch.Tensor:
        """(N, D) mean cell features -> (N, K) one-hot of the nearest mode (ties share)."""
        d = (((image_features[:, None, :] / self.scale) - self.centroids[None]) ** 2).sum(-1)
        nearest = (d <= d.min(dim=1, keepdim=True).values).float()
        return nearest / nearest.sum(dim=1, keepdim=True)

    def forward(self, cells: torch.Tensor) -> torch.Tensor:
        """(N, D, H, W) features -> (N, H, W) squared distances (1x1 convolutions, ONNX friendly)."""
        n, d, h, w = cells.shape
        weight = self.whiten.flatten(0, 1)[:, :, None, None]  # static shapes, so the export keeps a plain Conv
        bias = -(self.whiten @ self.mean[:, :, None]).flatten()
        z = F.conv2d(cells, weight, bias).reshape(n, self.modes, d, h, w)
        per_mode = (z * z).sum(dim=2)
        if self.modes == 1:
            return per_mode[:, 0]
        return (per_mode * self.mode_of(cells.mean(dim=(2, 3)))[:, :, None, None]).sum(dim=1)


def cluster_modes(image_features: torch.Tensor, k: int, seed: int = 0, rounds: int = 30,
                  restarts: int = 8) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """k-means of good images' mean features (each feature divided by its spread): (centroids,
    scale, each image's mode). A mode with under half a fair share of the images is dropped and its
    images go to the others (a tiny mode's Gaussian would be fitted on too few images). k-means++
    starts, several: the one keeping the most modes, then the tightest, wins."""
    x = image_features.double()
    scale = x.std(dim=0).clamp(min=1e-6)
    z = x / scale
    gen = torch.Generator().manual_seed(seed)
    best: tuple[tuple[int, float], torch.Tensor] | None = None
    for _ in range(restarts):
        centroids = _lloyd(z, _kmeans_pp(z, min(k, len(z)), gen), max(1, len(z) // (2 * k)), rounds)
        d = torch.cdist(z, centroids).min(dim=1).values
        key = (len(centroids), -float((d * d).sum()))
        if best is None or key > best[0]:
            best = (key, centroids)
    assert best is not None
    centroids = best[1]
    return centroids.float(), scale.float(), torch.cdist(z, centroids).argmin(dim=1)


def _kmeans_pp(z: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    picks = [int(torch.randint(len(z), (1,), generator=gen))]
    for _ in range(k - 1):
        d2 = torch.cdist(z, z[picks]).min(dim=1).values ** 2
        picks.append(int(torch.multinomial(d2 / d2.sum(), 1, generator=gen)) if d2.sum() > 0 else picks[0])
    return z[picks].clone()


def _lloyd(z: torch.Tensor, centroids: torch.Tensor, smallest: int, rounds: int) -> torch.Tensor:
    """k-means iterations that drop a mode smaller than `smallest`; returns centroids that each keep
    at least one image."""
    for _ in range(rounds):
        assign = torch.cdist(z, centroids).argmin(dim=1)
        sizes = torch.bincount(assign, minlength=len(centroids))
        keep = (sizes >= smallest) if (sizes >= smallest).any() else sizes == sizes.max()
        moved = torch.stack([z[assign == j].mean(dim=0) for j in torch.nonzero(keep).flatten().tolist()])
        if bool(keep.all()) and torch.allclose(moved, centroids):
            break
        centroids = moved
    sizes = torch.bincount(torch.cdist(z, centroids).argmin(dim=1), minlength=len(centroids))
    return centroids[sizes > 0]


EPS = 1e-6
LOGIT_LIMIT = math.log((1.0 - EPS) / EPS)  # the logit of a probability kept EPS inside (0, 1)
SQUASH_LIMIT = 1e4
"""|fused z - cut| beyond which scores stop differing (by < 1e-4): an overflowed distance (inf in an
FP16 engine) still gives a reject score, not NaN."""


def logit(p: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)), p kept EPS inside (0, 1): the space the decision fuses the learned signal in."""
    p = p.clamp(EPS, 1.0 - EPS)
    return torch.log(p) - torch.log1p(-p)


def not_good_logit(class_logits: torch.Tensor) -> torch.Tensor:
    """(N, C >= 2) class logits, good first -> (N,) logit of 1 - P(good), from the logits themselves:
    via the probabilities, 1 - P(good) of a confident part is lost to rounding (FP16 steps by 5e-4
    near 1; a saturated part's logit becomes inf and its fused score NaN)."""
    good, defects = class_logits[:, 0], class_logits[:, 1:]
    top = defects.amax(dim=1)
    return top + torch.log(torch.exp(defects - top[:, None]).sum(dim=1)) - good  # log-sum-exp, no overflow


def log_distance(d: torch.Tensor) -> torch.Tensor:
    """log of a squared cell distance (at least EPS; NaN counts as infinitely far): the space the
    decision fuses the anomaly in."""
    return torch.log(nan_to(d, math.inf).clamp(min=EPS))


def nan_to(x: torch.Tensor, value: float) -> torch.Tensor:
    """`x` with NaN replaced by `value`, the reject side. NaN must not reach a clamp: an engine's clamp
    may turn it into a bound (TensorRT's Clip is max/min), and the lower one would pass the part."""
    return torch.where(torch.isnan(x), value, x)


class Decision(nn.Module):
    """One reject score in (0, 1) from two signals: the learned one (the classifier's 1 - P(good), or
    the defect map's peak where that is larger: the map head also learnt generic flaws from
    pseudo-anomalies, so it sees defect types the classifier has no class for) and the anomaly
    distance (the largest cell distance from good parts' features). Both enter in the space they are
    fused in: the learned signal as a logit, the distance as a log. The fused z of
    models.fusion.Fusion minus its calibrated cut, d, is mapped to 0.5 + 0.5 d / (1 + |d|). A part is
    rejected (score >= THRESHOLD = 0.5) exactly when z reaches the cut. Monotone and never saturating:
    scores keep their order for ROC curves and for choosing another threshold without retraining
    (`lineinspect model set-threshold`)."""

    THRESHOLD = 0.5

    def __init__(self) -> None:
        super().__init__()
        for name, value in (("anomaly_center", 0.0), ("anomaly_scale", 1.0), ("class_center", 0.0),
                            ("class_scale", 1.0), ("anomaly_weight", 0.7071), ("class_weight", 0.7071),
                            ("cut", 1e6), ("uses_map", 0.0)):  # fmt: skip  (uncalibrated: passes nothing, no NaN)
            self.register_buffer(name, torch.tensor(value))
        # uses_map: 1 when the map head was trained (defect masks or pseudo-anomalies); an untrained
        # head says 0.5 everywhere and must not count.

    def set(self, fusion: Fusion, cut: float) -> None:
        """Take a fitted fusion and the cut on its z (models.thresholds.calibrated_cut)."""
        values = {"anomaly_center": fusion.anomaly_center, "anomaly_scale": fusion.anomaly_scale,
                  "class_center": fusion.class_center, "class_scale": fusion.class_scale,
                  "anomaly_weight": math.cos(fusion.angle), "class_weight": math.sin(fusion.angle),
                  "cut": cut}  # fmt: skip
        for name, value in values.items():
            getattr(self, name).fill_(value)

    def learned_logit(self, class_logits: torch.Tensor, defect_logits: torch.Tensor) -> torch.Tensor:
        """(N, C) class logits, (N, 1, H, W) defect-map logits -> (N,) the learned signal as a logit,
        within +-LOGIT_LIMIT (the logit of the larger of 1 - P(good) and the map's peak probability:
        the larger logit)."""
        peak = torch.where(self.uses_map > 0.5, defect_logits.amax(dim=(1, 2, 3)), -LOGIT_LIMIT)
        learned = torch.maximum(not_good_logit(class_logits), peak)
        return nan_to(learned, LOGIT_LIMIT).clamp(-LOGIT_LIMIT, LOGIT_LIMIT)

    def anomaly_map(self, cell_distances: torch.Tensor) -> torch.Tensor:
        """(N, H, W) distances -> (N, 1, H, W) in (0, 1): 0.5 where a cell's standardized anomaly
        reaches the cut (the learned signal at its good parts' median); the defect map without masks."""
        a = (log_distance(cell_distances) - self.anomaly_center) / self.anomaly_scale
        return _squash(a - self.cut)[:, None]  # unweighted: a fused score that leans on the learned signal keeps a map

    def score(self, learned_logit: torch.Tensor, log_max_distance: torch.Tensor) -> torch.Tensor:
        """(N,) learned signal as a logit, (N,) log of the largest cell distance -> (N,) reject score."""
        c = (learned_logit - self.class_center) / self.class_scale
        a = (log_max_distance - self.anomaly_center) / self.anomaly_scale
        return _squash(self.anomaly_weight * a + self.class_weight * c - self.cut)

    def forward(self, class_logits: torch.Tensor, defect_logits: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
        """One view's reject score (Inspector.signals averages several views before `score`)."""
        learned = self.learned_logit(class_logits, defect_logits)
        return self.score(learned, log_distance(distances.amax(dim=(1, 2))))


def _squash(d: torch.Tensor) -> torch.Tensor:
    """z - cut -> score in (0, 1), 0.5 at the cut; NaN (a broken input or model) -> a reject score."""
    d = nan_to(d, SQUASH_LIMIT).clamp(-SQUASH_LIMIT, SQUASH_LIMIT)
    return 0.5 + 0.5 * d / (1.0 + d.abs())


def _quarter_turn(x: torch.Tensor) -> torch.Tensor:
    """torch.rot90(x, 1, (-2, -1)) in operations ONNX has (it has no rot90)."""
    return x.flip(-1).transpose(-2, -1)


def _quarter_turn_back(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-2, -1).flip(-1)


TEST_VIEWS: tuple[tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]], ...] = (
    (lambda x: x, lambda x: x),
    (lambda x: x.flip(-1), lambda x: x.flip(-1)),
    (lambda x: x.flip(-2), lambda x: x.flip(-2)),
    (_quarter_turn, _quarter_turn_back),
)
"""Test-time views of a part whose surface has no preferred orientation (augmentation.dihedral), each
with its way back: the image, mirrored, upside down, a quarter turn. The network sees each; its
signals are averaged. One training draw's blind spots are orientation-specific, so the views even
them out (measured on the held-out suite: +1..11 points on trained types, +5..15 on never-trained
ones, 4x the inference cost)."""


class Inspector(nn.Module):
    """The whole model the line runs: network, good parts' feature model and decision.
    Output: (class_probs (N, C), defect_map (N, 1, S/8, S/8) in [0, 1], score (N,) in [0, 1)).
    The defect map is the map head's where training had masks, else the anomaly map (every cell's
    distance from good parts' features): without masks the map head learnt only the generic
    pseudo-anomalies, not the dataset's own defect classes, and the anomaly map shows every kind.
    (So on a mask-less dataset a reject carried by the map head's peak may show weakly on the map.)
    With `views` > 1 every output is the mean over the first `views` TEST_VIEWS: class probabilities
    and maps (turned back) as they are, the two signals in the space the decision fuses them in
    (logit of the learned one, log of the distance), so the fused score is the views' mean."""

    def __init__(self, num_classes: int, pretrained: bool = True, modes: int = 1, views: int = 1,
                 levelled: bool = True) -> None:  # fmt: skip
        super().__init__()
        if not 1 <= views <= len(TEST_VIEWS):
            raise ValueError(f"views must be 1..{len(TEST_VIEWS)}, got {views}")
        self.net = InspectionNet(num_classes, pretrained=pretrained, levelled=levelled)
        self.good = GoodFeatureModel(self.net.cell_feature_dim, modes)
        self.decision = Decision()
        self.views = views
        self.register_buffer("learnt_map", torch.tensor(1.0))
        """1 when training had defect masks (the map head is the map), 0 when not (the anomaly map is)."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        probs, maps, learned_logit, log_max_distance = self.signals(image)
        return probs, maps, self.decision.score(learned_logit, log_max_distance)

    def signals(self, image: torch.Tensor, good: GoodFeatureModel | None = None) -> tuple[torch.Tensor, ...]:
        """(class_probs (N, C), defect_map (N, 1, S/8, S/8), learned signal as a logit (N,), log of the
        largest cell distance (N,)) of normalized inputs (N, 3, S, S); `good`: another good parts'
        model than the own. The signals stay in log space throughout, so that an FP16 engine
        neither rounds them away nor overflows (Decision.learned_logit)."""
        views = TEST_VIEWS[: self.views]
        x = torch.cat([turn(image) for turn, _ in views]) if self.views > 1 else image
        logits, defect_logits, cells = self.net.forward_with_features(x)
        probs = logits.softmax(dim=1)
        distances = (self.good if good is None else good)(cells)
        maps = self.defect_map(defect_logits, distances)
        learned = self.decision.learned_logit(logits, defect_logits)
        log_max_distance = log_distance(distances.amax(dim=(1, 2)))
        if self.views == 1:
            return probs, maps, learned, log_max_distance
        v = self.views
        per_view = maps.reshape(v, -1, *maps.shape[1:])
        maps = torch.stack([back(per_view[i]) for i, (_, back) in enumerate(views)])
        return (probs.reshape(v, -1, probs.shape[1]).mean(dim=0), maps.mean(dim=0),
                learned.reshape(v, -1).mean(dim=0), log_max_distance.reshape(v, -1).mean(dim=0))  # fmt: skip

    def defect_map(self, defect_logits: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
        """The map head's where training had masks, else the anomaly map: (N, 1, S/8, S/8) in [0, 1]."""
        return self.learnt_map * torch.sigmoid(defect_logits) + (1.0 - self.learnt_map) * \
            self.decision.anomaly_map(distances)  # fmt: skip


def crop_resize(image: np.ndarray, roi: tuple[int, int, int, int] | None, size: int = INPUT_SIZE) -> np.ndarray:
    """Cut the ROI (x, y, w, h) out of a Mono8 (H, W) or RGB8 (H, W, 3) image and bring it to `size`
    squared (uint8), with the runtime's own resize (workers.preprocess), so training sees what the
    line will feed."""
    if roi is not None:
        x, y, w, h = roi
        image = image[y : y + h, x : x + w]
    if image.shape[:2] != (size, size):
        resized = resize_bilinear(image[None], size, size)[0]
        image = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return image


def channels_first(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W) grey or (N, H, W, 3) colour -> float32 (N, C, H, W) with C = 1 or 3."""
    t = torch.as_tensor(images, dtype=torch.float32)
    return t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2)


def to_input(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in 0..1, C = 1 (grey, replicated to the three channels the pretrained stem
    expects) or 3 -> (N, 3, H, W) normalized with ImageNet mean/std per channel."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def normalize(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W) grey or (N, H, W, 3) colour levels scaled to 0..1 -> network input (N, 3, H, W)."""
    return to_input(channels_first(images))


def input_meta(roi: tuple[int, int, int, int] | list[int] | None, color: Color = "gray",
               size: int = INPUT_SIZE) -> ModelMeta:  # fmt: skip
    """The runtime's description of this network's input, for workers.preprocess."""
    return ModelMeta(source="models.net", classes=("good",), height=size, width=size, channels=3,
                     color=color, mean=MEAN, std=STD, roi=tuple(roi) if roi is not None else None,  # type: ignore[arg-type]
                     threshold=Decision.THRESHOLD, version="models.net")  # fmt: skip


def preprocess(
    frames: np.ndarray, roi: tuple[int, int, int, int] | list[int] | None, color: Color = "gray",
    size: int = INPUT_SIZE,
) -> np.ndarray:
    """Mono8 (N, H, W) or RGB8 (N, H, W, 3) frames -> float32 (N, 3, size, size), exactly what the
    ONNX input `image` wants: the line's own preprocessing, so export checks and evaluation cannot drift."""
    return runtime_preprocess(list(frames), input_meta(roi, color, size))
