"""Transfer-learning trainer for the inspection network, on CPU.

What it does: loads a class-per-folder image set (`<dataset>/<class>/*.png`, optional MVTec-style
masks in `<dataset>/ground_truth/<class>/<name>_mask.png`), crops the ROI, splits off a stratified
validation set, fine-tunes `InspectionNet` (classification + defect map where masks exist, and on
the pseudo-anomalies painted on good images) with the product's augmentation (models.augmentation)
and class-balanced loss, stops early on validation loss, fits the good parts' feature model (the
anomaly score), and calibrates the reject score on good images it never trained on for a target
false-reject rate.
Writes `model.pt` (weights + everything export needs) and `train_report.json` to the output folder.
Same data, seed and thread count give the same weights.

What it does not: export (export.py) or hyper-parameter search. It needs no GPU and downloads nothing.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from models import pseudo_anomaly
from models.augmentation import Augmentation
from models.cpu_memory import keep_freed_memory
from models.dataset import DatasetError, Layout, list_dataset
from models.fusion import Fusion, fit_fusion
from models.net import (
    MAP_STRIDE,
    TEST_VIEWS,
    Decision,
    GoodFeatureModel,
    InspectionNet,
    Inspector,
    Moments,
    channels_first,
    cluster_modes,
    crop_resize,
    log_distance,
    logit,
    normalize,
    to_input,
)
from models.resolution import side_for
from models.thresholds import HOLD_BAND, HOLD_CONFIDENCE, Calibrated, calibrated_cut, good_images_needed

CHECK_LABELS = 10
"""The highest-scoring calibration good images the training report lists as "check these labels"."""
_MAP_POS_WEIGHT = 4.0  # defect cells are a few % of the map; without this the head predicts all-clear
_MAP_LOSS_WEIGHT = 0.5
_BLUR_P = 0.2  # share of images defocused, where the product's augmentation allows it


@dataclass
class Data:
    """A dataset in memory: ROI crops, labels, 1/8-scale defect maps and whether each map is known."""

    images: np.ndarray  # uint8 (N, S, S) grey or (N, S, S, 3) colour; S = the layout's input_size
    labels: np.ndarray  # int64 (N,)
    maps: np.ndarray  # float32 (N, S/8, S/8), 1 where any pixel of the cell is defective
    has_map: np.ndarray  # float32 (N,), 0 for a defect image without a mask file


@dataclass
class TrainResult:
    checkpoint: Path
    threshold: float
    report: dict


def dataset_hash(dataset_dir: str | Path) -> str:
    """sha256 over the sorted relative paths and bytes of every file under `dataset_dir`."""
    root = Path(dataset_dir)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def load_data(layout: Layout, roi: tuple[int, int, int, int] | None, size: int) -> Data:
    root = layout.root
    mode = "L" if layout.color == "gray" else "RGB"
    images, labels, maps, has_map = [], [], [], []
    cells = size // MAP_STRIDE
    for label, name in enumerate(layout.classes):
        for f in layout.images[name]:
            images.append(crop_resize(np.asarray(Image.open(f).convert(mode)), roi, size))
            labels.append(label)
            mask_file = root / "ground_truth" / name / f"{f.stem}_mask.png"
            if label == 0 or mask_file.exists():
                # Good parts have no mask file (MVTec convention) because their mask is empty.
                m = np.zeros((size, size), np.uint8)
                if label:
                    m = crop_resize(np.asarray(Image.open(mask_file).convert("L")), roi, size)
                cell_max = m.reshape(cells, MAP_STRIDE, cells, MAP_STRIDE).max(axis=(1, 3))
                maps.append((cell_max > 127).astype(np.float32))
                has_map.append(1.0)
            else:
                maps.append(np.zeros((cells, cells), np.float32))
                has_map.append(0.0)
    return Data(np.stack(images), np.array(labels), np.stack(maps), np.array(has_map, np.float32))


NET_GOODS = (100, 600)
"""Good images the network trains on: twice the largest defect class, within these bounds (the upper
one bounds training time). The loss weighs classes equally, but half the good images carry a
pseudo-anomaly, and more good surface teaches the map head what is not a flaw. Measured on the
held-out suite (300 per class, 3 seeds): 480 good instead of 300 caught 5-8 points more of the
never-trained types, trained types unchanged; 960 no better and one seed's training stopped early.
The other good images are the calibration set, which the threshold needs large
(thresholds.good_images_needed)."""
CALIBRATION_FOLDS = 5
MODES, GOODS_PER_MODE = 4, 150
"""Good parts' modes (surface finishes, variants) the anomaly model looks for, and the good images
each needs (one covariance of 152 features per mode)."""


@dataclass
class Split:
    train: np.ndarray
    """What the network trains on."""
    val: np.ndarray
    """Early stopping: the validation defects and good images of its own (neither trains nor calibrates)."""
    calibration: np.ndarray
    """Good images the network never trains on: the fusion and the threshold are set on them."""
    val_defects: np.ndarray


def split_data(labels: np.ndarray, val_fraction: float, rng: np.random.Generator) -> Split:
    """Defect classes split stratified (`val_fraction` to validation). Good images: as NET_GOODS says
    (at most 1 - `val_fraction` of them) train the network, a few stop its training early (as many
    as validation defects, or `val_fraction` of the network's share), every other one calibrates."""
    train_idx, val_defects = [], []
    for c in np.unique(labels[labels != 0]):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(len(idx) * val_fraction))
        val_defects.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    goods = rng.permutation(np.flatnonzero(labels == 0))
    largest = max((len(t) for t in train_idx), default=0)
    wanted = min(max(2 * largest, NET_GOODS[0]), NET_GOODS[1])
    n_net = max(1, min(round(len(goods) * (1 - val_fraction)), wanted, len(goods) - 1))
    defects = np.concatenate(val_defects) if val_defects else np.zeros(0, int)
    # Early stopping gets good images of its own: choosing the network on calibration images would
    # make their scores a little less than out-of-sample.
    n_stop = min(len(goods) - n_net - 1, max(len(defects), round(n_net * val_fraction / (1 - val_fraction))))
    stop, calibration = goods[n_net : n_net + n_stop], goods[n_net + n_stop :]
    return Split(np.concatenate([goods[:n_net], *train_idx]), np.concatenate([stop, defects]), calibration, defects)


def stop_early(done: int, rounds: int, stale: int, patience: int) -> bool:
    """Stop training: no validation improvement for `patience` rounds, and at least half the rounds
    done. Before that the one-cycle learning rate is high and the validation loss jumps about; runs
    that stopped there (round 5 or 6 of 15-20, measured) kept a round-1 or -2 network that caught
    15-22 points fewer of the trained defect types on the held-out suite, 11-35 fewer never-trained."""
    return stale >= patience and done >= rounds // 2


def augment(images: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor, aug: Augmentation,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """uint8 (B, H, W[, 3]) crops, their maps and labels -> (normalized (B, 3, H, W) inputs, matching
    maps, which images carry a pseudo-anomaly). What varies is the product's `aug`: dihedral turns,
    shifts and small rotations, brightness and contrast around the image mean (lighting drifts),
    defocus, sensor noise; and a share of the good images get a painted generic flaw
    (models.pseudo_anomaly) and its mask."""
    b = images.shape[0]
    x = channels_first(images) / 255.0
    k = torch.randint(0, 4, (b,), generator=gen) if aug.dihedral else torch.zeros(b, dtype=torch.long)
    flip = (torch.rand(b, generator=gen) < 0.5) & aug.dihedral
    blur = (torch.rand(b, generator=gen) < _BLUR_P) & (aug.blur_sigma > 0)
    sigma_blur = torch.empty(b).uniform_(0.0, aug.blur_sigma, generator=gen)
    pseudo = (labels == 0) & (torch.rand(b, generator=gen) < aug.pseudo_anomalies)
    xs, ms = [], []
    for i in range(b):
        xi, mi = torch.rot90(x[i], int(k[i]), dims=(-2, -1)), torch.rot90(maps[i], int(k[i]))
        if flip[i]:
            xi, mi = xi.flip(-1), mi.flip(-1)
        if blur[i] and sigma_blur[i] > 0.1:
            xi = pseudo_anomaly.gaussian_blur(xi, float(sigma_blur[i]))
        if pseudo[i]:
            xi, flaw = pseudo_anomaly.paint(xi, gen)
            mi = F.max_pool2d(flaw[None, None], MAP_STRIDE)[0, 0]
        xs.append(xi)
        ms.append(mi)
    x, m = torch.stack(xs), torch.stack(ms)
    if aug.shift_px or aug.rotation_deg:
        x, m = _move(x, m, aug, gen)
    contrast = 1.0 + torch.empty(b, 1, 1, 1).uniform_(-aug.contrast, aug.contrast, generator=gen)
    brightness = torch.empty(b, 1, 1, 1).uniform_(-aug.brightness, aug.brightness, generator=gen)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + brightness
    sigma = torch.empty(b, 1, 1, 1).uniform_(0.0, aug.noise, generator=gen)
    x = x + sigma * torch.randn(x.shape, generator=gen)
    return to_input(x.clamp(0.0, 1.0)), m, pseudo


def _move(x: torch.Tensor, m: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Shift by up to `shift_px` (whole pixels: a shift alone resamples nothing, so no faint flaw is
    blurred) and rotate by up to `rotation_deg`, images and maps alike. Edges repeat (the part's
    surface continues beyond the ROI); each map cell is warped at full resolution and pooled back,
    so a defect moved by part of a cell keeps its cells."""
    b, _, h, w = x.shape
    angle = torch.deg2rad(torch.empty(b).uniform_(-aug.rotation_deg, aug.rotation_deg, generator=gen))
    pixels = torch.randint(-aug.shift_px, aug.shift_px + 1, (b, 2), generator=gen).float()
    shift = pixels * 2 / torch.tensor([w, h])
    theta = torch.stack([torch.stack([angle.cos(), -angle.sin(), shift[:, 0]], 1),
                         torch.stack([angle.sin(), angle.cos(), shift[:, 1]], 1)], 1)  # fmt: skip
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    full = F.interpolate(m[:, None], size=(h, w), mode="nearest")
    full = F.grid_sample(full, grid, mode="nearest", padding_mode="border", align_corners=False)
    return moved, F.max_pool2d(full, MAP_STRIDE)[:, 0]


def _losses(
    model: InspectionNet,
    x: torch.Tensor,
    y: torch.Tensor,
    m: torch.Tensor,
    w: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    pseudo: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(classification + weighted defect-map loss, class logits); `w` is 1 where the map is known;
    `pseudo` marks good images carrying a pseudo-anomaly (their map is known, their class is not)."""
    logits, defect_logits = model(x)
    # Label smoothing keeps P(good) off exactly 0/1, so the threshold quantile is not taken among
    # saturated scores that all round to the same float.
    per_image = F.cross_entropy(logits, y, label_smoothing=0.05, reduction="none")
    weights = class_weights[y] if class_weights is not None else torch.ones_like(per_image)
    if pseudo is not None:
        # A pseudo-anomaly teaches the defect map only: as "not good" for the classifier it made the
        # network call real good surfaces defective (measured: the classifier caught 14-33 points fewer per texture).
        weights = torch.where(pseudo, 0.0, weights)
    ce = (per_image * weights).sum() / weights.sum().clamp(min=1e-6)
    per_pixel = F.binary_cross_entropy_with_logits(
        defect_logits[:, 0], m, reduction="none", pos_weight=torch.tensor(_MAP_POS_WEIGHT, device=m.device)
    )
    seg = (per_pixel.mean(dim=(1, 2)) * w).sum() / w.sum().clamp(min=1.0)
    return ce + _MAP_LOSS_WEIGHT * seg, logits


@dataclass
class Outputs:
    """What the deployed model says about a batch of ROI crops."""

    probs: np.ndarray  # (N, C) class probabilities
    maps: np.ndarray  # (N, S/8, S/8) defect probability per 8 px cell
    scores: np.ndarray  # (N,) reject score in (0, 1); reject when >= Decision.THRESHOLD
    learned: np.ndarray  # (N,) the learned signal: 1 - P(good), or the defect map's peak where larger
    anomaly: np.ndarray  # (N,) largest squared cell distance to the good parts' features
    # Both signals are the means over the model's test-time views (net.Inspector.signals).


@torch.no_grad()
def predict(
    model: Inspector, images: np.ndarray, batch_size: int = 64, good: GoodFeatureModel | None = None
) -> Outputs:
    """Run the deployed model (PyTorch) on uint8 ROI crops (N, S, S[, 3]); `good`: another good
    parts' feature model than the model's own (out-of-fold scores)."""
    model.eval()
    parts: list[tuple[torch.Tensor, ...]] = []
    for i in range(0, len(images), batch_size):
        x = normalize(torch.from_numpy(images[i : i + batch_size]).float() / 255.0).to(_device_of(model))
        probs, maps, learned, log_max_distance = model.signals(x, good)
        score = model.decision.score(learned, log_max_distance)
        parts.append((probs, maps[:, 0], score, torch.sigmoid(learned), torch.exp(log_max_distance)))
    return Outputs(*(torch.cat(t).cpu().numpy() for t in zip(*parts, strict=True)))


@torch.no_grad()
def image_features(model: Inspector, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """(N, D) mean cell features of uint8 crops: what assigns an image to a mode of good parts."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(torch.from_numpy(images[i : i + batch_size]).float() / 255.0).to(_device_of(model))
        out.append(model.net.forward_with_features(x)[2].mean(dim=(2, 3)).cpu())
    return torch.cat(out)


@torch.no_grad()
def good_moments(model: Inspector, good_images: np.ndarray, batch_size: int = 64) -> list[Moments]:
    """Per mode of the model's good parts' model: sums of the cell features of the good crops in
    that mode, each also seen flipped and turned (free extra samples of a texture with no preferred
    orientation; a view stays in its image's mode)."""
    model.eval()
    dim, modes = model.good.mean.shape[1], model.good.modes
    totals = [Moments(0, torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64))] * modes
    for i in range(0, len(good_images), batch_size):
        x = (channels_first(good_images[i : i + batch_size]) / 255.0).to(_device_of(model))
        mode = None
        for view in (x, x.flip(-1), torch.rot90(x, 1, (-2, -1))):
            feats = model.net.forward_with_features(to_input(view))[2]
            if mode is None:
                mode = model.good.mode_of(feats.mean(dim=(2, 3))).argmax(dim=1).cpu()
            feats = feats.cpu()
            for k in range(modes):
                if (mode == k).any():
                    f = feats[mode == k]
                    totals[k] = totals[k] + Moments.of(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
    return totals


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def modes_for(n_good: int) -> int:
    """How many modes of good parts to look for: up to MODES, each with >= GOODS_PER_MODE images."""
    return max(1, min(MODES, n_good // GOODS_PER_MODE))


def fit_good_model(model: Inspector, good_images: np.ndarray, modes: int = 1) -> None:
    """Fit the good parts' feature model (`modes` modes at most) on uint8 crops of good parts."""
    set_modes(model, good_images, modes)
    model.good.fit_moments(good_moments(model, good_images))


def set_modes(model: Inspector, good_images: np.ndarray, modes: int) -> None:
    """Find the modes of these good images and give the model a good parts' model with them."""
    dim = model.net.cell_feature_dim
    centroids, scale, _ = cluster_modes(image_features(model, good_images), modes)
    model.good = GoodFeatureModel(dim, len(centroids)).to(_device_of(model))
    model.good.set_modes(centroids, scale)


def fit_good_out_of_fold(model: Inspector, net_goods: np.ndarray, calibration: np.ndarray,
                         folds: int = CALIBRATION_FOLDS, modes: int = 1) -> Outputs:  # fmt: skip
    """Fit the deployed good parts' model on every good image, and return each calibration image's
    outputs from a model fitted without its fold: scores a new good part would get, for all of them
    (the network never trained on them either). The modes are found once, on all good images."""
    set_modes(model, np.concatenate([net_goods, calibration]), modes)
    folds = max(1, min(folds, len(calibration)))
    fold_of = np.arange(len(calibration)) % folds
    per_fold = [good_moments(model, calibration[fold_of == f]) for f in range(folds)]
    total = good_moments(model, net_goods)
    for m in per_fold:
        total = [a + b for a, b in zip(total, m, strict=True)]
    model.good.fit_moments(total)
    out = [None] * len(calibration)
    for f in range(folds):
        held_out = copy.deepcopy(model.good)
        # Without fold f; a mode that would keep too few feature vectors keeps them all (a small leak).
        held_out.fit_moments([a - b if a.n - b.n > 2 * len(a.total) else a
                              for a, b in zip(total, per_fold[f], strict=True)])  # fmt: skip
        rows = np.flatnonzero(fold_of == f)
        o = predict(model, calibration[rows], good=held_out.to(_device_of(model)))
        for j, r in enumerate(rows):
            out[r] = (o.probs[j], o.maps[j], o.scores[j], o.learned[j], o.anomaly[j])
    return Outputs(*(np.stack(col) for col in zip(*out, strict=True)))


def calibrate(model: Inspector, good: Outputs, defects: Outputs, target_frr: float) -> tuple[Calibrated, Fusion]:
    """Fuse the two signals (learned on `defects` against `good`) and cut the fused score for
    `target_frr` on `good`, which must be scores of good parts the model never learnt from."""
    fusion = fit_fusion(good.learned, good.anomaly, defects.learned, defects.anomaly, target_frr)
    cal = calibrated_cut(fusion.z(good.learned, good.anomaly), target_frr)
    model.decision.set(fusion, cal.cut)
    return cal, fusion


def rescore(model: Inspector, out: Outputs) -> Outputs:
    """`out` with its reject scores from the model's (new) decision."""
    with torch.no_grad():
        learned, distance = torch.from_numpy(out.learned), torch.from_numpy(out.anomaly)
        scores = copy.deepcopy(model.decision).cpu().score(logit(learned), log_distance(distance)).numpy()
    return Outputs(out.probs, out.maps, scores, out.learned, out.anomaly)


def detection_metrics(scores: np.ndarray, probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Detection rate, false-reject rate and confusion matrix (rows: true, cols: predicted class)."""
    reject = scores >= threshold
    n_classes = probs.shape[1]
    confusion = np.zeros((n_classes, n_classes), int)
    np.add.at(confusion, (labels, probs.argmax(1)), 1)
    good = labels == 0
    return {
        "detection_rate": float(reject[~good].mean()) if (~good).any() else math.nan,
        "false_reject_rate": float(reject[good].mean()) if good.any() else math.nan,
        "accuracy": float((probs.argmax(1) == labels).mean()),
        "confusion": confusion.tolist(),
    }


def train(
    dataset_dir: str | Path,
    out_dir: str | Path,
    *,
    epochs: int = 15,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 3e-3,
    val_fraction: float = 0.2,
    patience: int = 4,
    target_frr: float = 0.01,
    roi: tuple[int, int, int, int] | None = None,
    pretrained: bool = True,
    min_steps: int = 300,
    threads: int = 2,
    device: str | None = None,
    progress: bool = True,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train on `dataset_dir`, write `out_dir/model.pt` and `out_dir/train_report.json`.

    `epochs` counts rounds: a round is one pass over the training set, or several when the set is
    so small that `epochs` passes would give fewer than `min_steps` updates (25 images per class
    must still train). Early stopping and the learning-rate schedule work in rounds.
    Classes come from the dataset's folders ("good" first); `roi` (x, y, w, h) overrides the
    dataset's own (dataset.json). Raises DatasetError for a malformed dataset.
    `pretrained=False` starts from random weights and trains every layer (the learning curve's
    baseline). Trains on `device`, by default a CUDA GPU where there is one, else the CPU. Sets
    torch's process-wide thread count to `threads` (on the CPU, results are reproducible per
    thread count). `init_from`: a sibling model's checkpoint (its `model.pt`) to fine-tune from
    instead of ImageNet: every layer it shares, and the classifier rows of the classes it shares by
    name; a class new to this dataset starts from scratch (`init_classes`)."""
    started = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    keep_freed_memory()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    console = Console(quiet=not progress)

    layout = list_dataset(dataset_dir)
    for name, files in layout.images.items():
        if len(files) < 2:
            raise DatasetError(f"{layout.root}: {name}/ has {len(files)} image; training needs at least 2 per class "
                               "(one goes to validation)")  # fmt: skip
    classes, size = layout.classes, layout.input_size
    if roi is not None and layout.smallest_defect_px is not None:
        size = side_for(max(roi[2:]), layout.smallest_defect_px)  # the side follows the ROI given here
    roi = roi or layout.roi
    data = load_data(layout, roi, size)
    split = split_data(data.labels, val_fraction, rng)
    train_idx, val_idx = split.train, split.val
    tensors = [torch.from_numpy(a) for a in (data.images, data.labels, data.maps, data.has_map)]
    views = len(TEST_VIEWS) if layout.augmentation.dihedral else 1  # a part that arrives one way round is seen so
    inspector = Inspector(len(classes), pretrained=pretrained, views=views)
    inherited = init_classes(inspector, Path(init_from), classes) if init_from is not None else None
    inspector = inspector.to(device)
    model = inspector.net.to(memory_format=torch.channels_last)
    frozen = model.frozen_modules() if pretrained else []
    for module in frozen:
        module.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    # Balanced classes: each class weighs the same in the loss whatever its image count (good
    # images are cheap to collect and usually far outnumber each defect class).
    counts = np.bincount(data.labels[train_idx], minlength=len(classes)).astype(np.float32)
    # Good images that carry a pseudo-anomaly drop out of the classifier's loss but not out of these
    # counts, so the good class weighs (1 - pseudo share) of a defect class: the classifier leans to
    # "defect" for what is unusual. Measured (one seed each, 300 per class): with the good class
    # re-weighted to full, unseen types in the visible band fell from 81/41/29 % to 56/37/26 % on
    # brick/grass/gravel at the same trained-type detection.
    class_weights = torch.from_numpy(counts.sum() / (len(classes) * np.maximum(counts, 1.0))).to(device)
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    passes_per_round = max(1, math.ceil(min_steps / (epochs * steps_per_epoch)))
    steps_per_round = passes_per_round * steps_per_epoch
    # One-cycle: a short warm-up protects the pretrained weights from the new heads' first, noisy
    # gradients; the long decay settles the weights within the few epochs a CPU budget allows.
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per_round, pct_start=0.15)

    history, best_loss, best_state, stale = [], math.inf, None, 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("training", total=epochs * steps_per_round)
        for epoch in range(epochs):
            model.train()
            for module in frozen:
                module.eval()  # frozen layers keep their ImageNet batch-norm statistics too
            order = np.concatenate([rng.permutation(train_idx) for _ in range(passes_per_round)])
            total = 0.0
            for start in range(0, len(order), batch_size):
                idx = torch.from_numpy(order[start : start + batch_size])
                images, labels, maps, has_map = (t[idx] for t in tensors)
                # On the CPU: cheap, and seeded the same everywhere.
                x, m, pseudo = augment(images, maps, labels, layout.augmentation, gen)
                has_map = torch.where(pseudo, 1.0, has_map)
                x = x.to(device).contiguous(memory_format=torch.channels_last)
                labels, m, has_map = labels.to(device), m.to(device), has_map.to(device)
                loss, _ = _losses(model, x, labels, m, has_map, class_weights, pseudo.to(device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
                bar.advance(task)
            val_loss, val_acc = _validate(model, tensors, val_idx)
            train_loss = total / len(order)
            history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc})
            console.log(f"round {epoch + 1}: train {train_loss:.4f}  val {val_loss:.4f}  acc {val_acc:.3f}")
            if val_loss < best_loss - 1e-4:
                best_loss, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                if stop_early(epoch + 1, epochs, stale, patience):
                    console.log(f"early stop: no val improvement for {stale} rounds")
                    break

    model.load_state_dict(best_state)
    inspector.net = model.to(memory_format=torch.contiguous_format)
    console.log(f"fitting the good parts' model; out-of-fold scores of {len(split.calibration)} calibration images")
    net_goods = data.images[train_idx[data.labels[train_idx] == 0]]
    modes = modes_for(int((data.labels == 0).sum()))
    learnt_map = bool(data.has_map[data.labels != 0].any())
    inspector.decision.uses_map.fill_(float(learnt_map or layout.augmentation.pseudo_anomalies > 0))
    good_out = fit_good_out_of_fold(inspector, net_goods, data.images[split.calibration], modes=modes)
    defect_out = predict(inspector, data.images[split.val_defects])
    cal, fusion = calibrate(inspector, good_out, defect_out, target_frr)
    inspector.learnt_map.fill_(float(learnt_map))
    good_out, defect_out = rescore(inspector, good_out), rescore(inspector, defect_out)
    good_files = layout.images["good"]  # label 0 comes first in load_data's order
    suspects = np.argsort(-good_out.scores, kind="stable")[:CHECK_LABELS]
    calibration = {**cal.summary(), "fusion": fusion.summary(), "folds": min(CALIBRATION_FOLDS, len(split.calibration)),
                   "check_labels": [{"file": str(good_files[split.calibration[i]].relative_to(layout.root)),
                                     "score": float(good_out.scores[i])} for i in suspects]}  # fmt: skip
    threshold = Decision.THRESHOLD
    val_labels = np.concatenate([np.zeros(len(split.calibration), int), data.labels[split.val_defects]])
    val_scores = np.concatenate([good_out.scores, defect_out.scores])
    val_probs = np.concatenate([good_out.probs, defect_out.probs])
    report = {
        "classes": list(classes),
        "seed": seed,
        "pretrained": pretrained,
        "device": device,
        "color": layout.color,
        "rounds_run": len(history),
        "passes_per_round": passes_per_round,
        "best_val_loss": best_loss,
        "threshold": threshold,
        "target_frr": target_frr,
        "calibration": calibration,
        "anomaly_modes": inspector.good.modes,
        "test_views": inspector.views,
        "levelled_inputs": inspector.net.levelled,
        "input_size": size,
        "augmentation": dataclasses.asdict(layout.augmentation),
        "defect_map": "map head, learnt from masks" if learnt_map else "anomaly map (no defect masks in the data)",
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "train_counts": {c: int(n) for c, n in zip(classes, counts, strict=True)},
        "val": detection_metrics(val_scores, val_probs, val_labels, threshold),
        "history": history,
        "train_data_hash": dataset_hash(dataset_dir),
        "init_from": inherited,
        "validation_good_files": [str(good_files[i].relative_to(layout.root)) for i in split.calibration],
        "train_seconds": time.perf_counter() - started,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "model.pt"
    inspector = inspector.cpu()
    torch.save(
        {
            "state_dict": inspector.state_dict(),
            "classes": list(classes),
            "roi": list(roi) if roi is not None else None,
            "color": layout.color,
            "threshold": threshold,
            "modes": inspector.good.modes,
            "views": inspector.views,
            "levelled": inspector.net.levelled,
            "input_size": size,
            "golden": golden_frames(layout, np.concatenate([split.calibration[:1], val_idx]), data.labels),
            "train_data_hash": report["train_data_hash"],
        },
        checkpoint,
    )
    (out / "train_report.json").write_text(json.dumps(report, indent=2))
    lo, hi = cal.interval
    console.log(f"calibrated on {cal.n} good images the network never trained on (out of fold): realized false-"
                f"reject rate 90 % within {lo:.2%}..{hi:.2%} for a {target_frr:.2%} target; on the calibration images "
                f"(optimistic: they set the cut) {report['val']}")
    if not cal.holds:
        console.log(f"[bold red]warning: the {target_frr:.2%} false-reject target is NOT supported by this data:[/] "
                    f"{cal.n} calibration good images; holding it within {HOLD_BAND[0]}-{HOLD_BAND[1]}x with "
                    f"{HOLD_CONFIDENCE:.0%} confidence needs {good_images_needed(target_frr)}. Add good images, or "
                    "re-calibrate later with `lineinspect model set-threshold`.")  # fmt: skip
    return TrainResult(checkpoint, threshold, report)


def init_classes(inspector: Inspector, checkpoint: Path, classes: tuple[str, ...]) -> dict[str, Any]:
    """Start `inspector` from a sibling model's weights: every tensor of the same name and shape,
    and for the classifier's last layer the rows of the classes both know (by name). Returns what
    was taken, for the training report (the sibling's data hash is the new model's lineage)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    theirs, old = ckpt["state_dict"], list(ckpt["classes"])
    own = inspector.state_dict()
    taken, rows = 0, [c for c in classes if c in old]
    for key, value in theirs.items():
        if key not in own:
            continue
        if own[key].shape == value.shape and ((len(old) == len(classes) and old == list(classes))
                                              or not key.startswith("net.classifier")):  # fmt: skip
            own[key] = value
            taken += 1
        elif key.startswith("net.classifier") and value.shape[0] == len(old):
            for name in rows:  # shared classes keep their learnt row; new classes start fresh
                own[key][classes.index(name)] = value[old.index(name)]
            taken += 1
    inspector.load_state_dict(own)
    return {"checkpoint": str(checkpoint), "classes": old, "shared_classes": rows, "tensors": taken,
            "parent_data_hash": ckpt.get("train_data_hash")}  # fmt: skip


def golden_frames(layout: Layout, val_idx: np.ndarray, labels: np.ndarray) -> list[torch.Tensor]:
    """One whole validation frame per class (as the camera gives it, before the ROI crop): the
    export's parity gate runs them through PyTorch and through the runtime's preprocessing."""
    files = [f for name in layout.classes for f in layout.images[name]]  # load_data's order
    mode = "L" if layout.color == "gray" else "RGB"
    picks = [val_idx[labels[val_idx] == c][0] for c in range(len(layout.classes)) if (labels[val_idx] == c).any()]
    return [torch.from_numpy(np.asarray(Image.open(files[i]).convert(mode)).copy()) for i in picks]


@torch.no_grad()
def _validate(model: InspectionNet, tensors: list[torch.Tensor], val_idx: np.ndarray) -> tuple[float, float]:
    model.eval()
    images, labels, maps, has_map = (t[torch.from_numpy(val_idx)].to(_device_of(model)) for t in tensors)
    total, correct = 0.0, 0
    for i in range(0, len(val_idx), 64):
        x = normalize(images[i : i + 64].float() / 255.0)
        loss, logits = _losses(model, x, labels[i : i + 64], maps[i : i + 64], has_map[i : i + 64])
        total += float(loss) * len(x)
        correct += int((logits.argmax(1) == labels[i : i + 64]).sum())
    return total / len(val_idx), correct / len(val_idx)


def load_checkpoint(path: str | Path) -> tuple[Inspector, dict]:
    """The trained model (eval mode) and the checkpoint's metadata."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "decision.class_limit" in ckpt["state_dict"]:
        raise RuntimeError(f"{path}: trained before the fused score (two limits, no calibration set); retrain it")
    # Trained before test-time views: one view; before levelled inputs: none.
    model = Inspector(len(ckpt["classes"]), pretrained=False, modes=ckpt["modes"], views=ckpt.get("views", 1),
                      levelled=ckpt.get("levelled", False))  # fmt: skip
    state = ckpt["state_dict"]
    # Trained before the map peak joined the learned signal: it stays out of that model's decision.
    state.setdefault("decision.uses_map", torch.tensor(0.0))
    model.load_state_dict(state)
    return model.eval(), ckpt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-frr", type=float, default=0.01)
    args = p.parse_args(argv)
    train(args.dataset, args.out, epochs=args.epochs, seed=args.seed, target_frr=args.target_frr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
