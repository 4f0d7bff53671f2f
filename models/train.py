"""Transfer-learning trainer for the inspection network, on CPU.

What it does: loads a class-per-folder image set (`<dataset>/<class>/*.png`, optional MVTec-style
masks in `<dataset>/ground_truth/<class>/<name>_mask.png`), crops the ROI, splits off a stratified
validation set, fine-tunes `InspectionNet` (classification + defect map where masks exist) with
flip/rotate, brightness/contrast and noise augmentation, stops early on validation loss, and
calibrates the reject threshold on validation "good" images for a target false-reject rate.
Writes `model.pt` (weights + everything export needs) and `train_report.json` to the output folder.
Same data, seed and thread count give the same weights.

What it does not: export (export.py) or hyper-parameter search. It needs no GPU and downloads nothing.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from models import synthetic
from models.net import INPUT_SIZE, MAP_STRIDE, InspectionNet, crop_resize, normalize

_MAP_POS_WEIGHT = 4.0  # defect cells are a few % of the map; without this the head predicts all-clear
_MAP_LOSS_WEIGHT = 0.5


@dataclass
class Data:
    """A dataset in memory: ROI crops, labels, 1/8-scale defect maps and whether each map is known."""

    images: np.ndarray  # uint8 (N, 128, 128)
    labels: np.ndarray  # int64 (N,)
    maps: np.ndarray  # float32 (N, 16, 16), 1 where any pixel of the cell is defective
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


def load_data(dataset_dir: str | Path, classes: tuple[str, ...], roi: tuple[int, int, int, int] | None) -> Data:
    root = Path(dataset_dir)
    images, labels, maps, has_map = [], [], [], []
    cells = INPUT_SIZE // MAP_STRIDE
    for label, name in enumerate(classes):
        files = sorted((root / name).glob("*.png"))
        if not files:
            raise FileNotFoundError(f"no images in {root / name}")
        for f in files:
            images.append(crop_resize(np.asarray(Image.open(f).convert("L")), roi))
            labels.append(label)
            mask_file = root / "ground_truth" / name / f"{f.stem}_mask.png"
            if label == 0 or mask_file.exists():
                # Good parts have no mask file (MVTec convention) because their mask is empty.
                m = np.zeros((INPUT_SIZE, INPUT_SIZE), np.uint8)
                if label:
                    m = crop_resize(np.asarray(Image.open(mask_file).convert("L")), roi)
                cell_max = m.reshape(cells, MAP_STRIDE, cells, MAP_STRIDE).max(axis=(1, 3))
                maps.append((cell_max > 127).astype(np.float32))
                has_map.append(1.0)
            else:
                maps.append(np.zeros((cells, cells), np.float32))
                has_map.append(0.0)
    return Data(np.stack(images), np.array(labels), np.stack(maps), np.array(has_map, np.float32))


def stratified_split(labels: np.ndarray, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Indices (train, val) with the same class proportions in both."""
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(len(idx) * val_fraction))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.concatenate(train_idx), np.concatenate(val_idx)


def augment(images: torch.Tensor, maps: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, H, W) crops and their maps -> normalized (B, 3, H, W) inputs and matching maps.
    Random dihedral transform (surfaces and defects have no preferred orientation), brightness and
    contrast around the image mean (lighting drifts), and sensor noise."""
    b = images.shape[0]
    x = images.float() / 255.0
    k = torch.randint(0, 4, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    xs, ms = [], []
    for i in range(b):
        xi, mi = torch.rot90(x[i], int(k[i])), torch.rot90(maps[i], int(k[i]))
        if flip[i]:
            xi, mi = xi.flip(-1), mi.flip(-1)
        xs.append(xi)
        ms.append(mi)
    x, m = torch.stack(xs), torch.stack(ms)
    contrast = torch.empty(b, 1, 1).uniform_(0.75, 1.25, generator=gen)
    brightness = torch.empty(b, 1, 1).uniform_(-0.12, 0.12, generator=gen)
    mean = x.mean(dim=(1, 2), keepdim=True)
    x = (x - mean) * contrast + mean + brightness
    sigma = torch.empty(b, 1, 1).uniform_(0.0, 0.03, generator=gen)
    x = x + sigma * torch.randn(x.shape, generator=gen)
    return normalize(x.clamp(0.0, 1.0)), m


def _losses(
    model: InspectionNet, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(classification + weighted defect-map loss, class logits); `w` is 1 where the map is known."""
    logits, defect_logits = model(x)
    # Label smoothing keeps P(good) off exactly 0/1, so the threshold quantile is not taken among
    # saturated scores that all round to the same float.
    ce = F.cross_entropy(logits, y, label_smoothing=0.05)
    per_pixel = F.binary_cross_entropy_with_logits(
        defect_logits[:, 0], m, reduction="none", pos_weight=torch.tensor(_MAP_POS_WEIGHT)
    )
    seg = (per_pixel.mean(dim=(1, 2)) * w).sum() / w.sum().clamp(min=1.0)
    return ce + _MAP_LOSS_WEIGHT * seg, logits


@torch.no_grad()
def predict(model: InspectionNet, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, C) for uint8 ROI crops (N, 128, 128)."""
    model.eval()
    out = [
        model(normalize(torch.from_numpy(images[i : i + batch_size]).float() / 255.0))[0].softmax(1)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy()


def calibrate_threshold(good_scores: np.ndarray, target_frr: float) -> float:
    """Reject threshold such that a fraction `target_frr` of good parts score at or above it."""
    return float(np.quantile(good_scores, 1.0 - target_frr))


def detection_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float, n_classes: int) -> dict:
    """Detection rate, false-reject rate and confusion matrix (rows: true, cols: predicted)."""
    scores = 1.0 - probs[:, 0]
    reject = scores >= threshold
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
    classes: tuple[str, ...] = synthetic.CLASSES,
    roi: tuple[int, int, int, int] | None = synthetic.ROI,
    threads: int = 2,
    progress: bool = True,
) -> TrainResult:
    """Train on `dataset_dir`, write `out_dir/model.pt` and `out_dir/train_report.json`.
    Sets torch's process-wide thread count to `threads` (results are reproducible per thread count)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    console = Console(quiet=not progress)

    data = load_data(dataset_dir, classes, roi)
    train_idx, val_idx = stratified_split(data.labels, val_fraction, rng)
    tensors = [torch.from_numpy(a) for a in (data.images, data.labels, data.maps, data.has_map)]
    model = InspectionNet(len(classes)).to(memory_format=torch.channels_last)
    frozen = model.frozen_modules()
    for module in frozen:
        module.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    # One-cycle: a short warm-up protects the pretrained weights from the new heads' first, noisy
    # gradients; the long decay settles the weights within the few epochs a CPU budget allows.
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)

    history, best_loss, best_state, stale = [], math.inf, None, 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("training", total=epochs * steps_per_epoch)
        for epoch in range(epochs):
            model.train()
            for module in frozen:
                module.eval()  # frozen layers keep their ImageNet batch-norm statistics too
            order = rng.permutation(train_idx)
            total = 0.0
            for start in range(0, len(order), batch_size):
                idx = torch.from_numpy(order[start : start + batch_size])
                images, labels, maps, has_map = (t[idx] for t in tensors)
                x, m = augment(images, maps, gen)
                loss, _ = _losses(model, x.contiguous(memory_format=torch.channels_last), labels, m, has_map)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
                bar.advance(task)
            val_loss, val_acc = _validate(model, tensors, val_idx)
            train_loss = total / len(order)
            history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc})
            console.log(f"epoch {epoch + 1}: train {train_loss:.4f}  val {val_loss:.4f}  acc {val_acc:.3f}")
            if val_loss < best_loss - 1e-4:
                best_loss, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                if stale >= patience:
                    console.log(f"early stop: no val improvement for {patience} epochs")
                    break

    model.load_state_dict(best_state)
    model = model.to(memory_format=torch.contiguous_format)
    probs = predict(model, data.images[val_idx])
    val_labels = data.labels[val_idx]
    threshold = calibrate_threshold(1.0 - probs[val_labels == 0, 0], target_frr)
    report = {
        "classes": list(classes),
        "seed": seed,
        "epochs_run": len(history),
        "best_val_loss": best_loss,
        "threshold": threshold,
        "target_frr": target_frr,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "val": detection_metrics(probs, val_labels, threshold, len(classes)),
        "history": history,
        "train_data_hash": dataset_hash(dataset_dir),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "model.pt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "classes": list(classes),
            "roi": list(roi) if roi is not None else None,
            "threshold": threshold,
            "train_data_hash": report["train_data_hash"],
        },
        checkpoint,
    )
    (out / "train_report.json").write_text(json.dumps(report, indent=2))
    console.log(f"threshold {threshold:.4g}; val {report['val']}")
    return TrainResult(checkpoint, threshold, report)


@torch.no_grad()
def _validate(model: InspectionNet, tensors: list[torch.Tensor], val_idx: np.ndarray) -> tuple[float, float]:
    model.eval()
    images, labels, maps, has_map = (t[torch.from_numpy(val_idx)] for t in tensors)
    total, correct = 0.0, 0
    for i in range(0, len(val_idx), 64):
        x = normalize(images[i : i + 64].float() / 255.0)
        loss, logits = _losses(model, x, labels[i : i + 64], maps[i : i + 64], has_map[i : i + 64])
        total += float(loss) * len(x)
        correct += int((logits.argmax(1) == labels[i : i + 64]).sum())
    return total / len(val_idx), correct / len(val_idx)


def load_checkpoint(path: str | Path) -> tuple[InspectionNet, dict]:
    """The trained network (eval mode) and the checkpoint's metadata."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = InspectionNet(len(ckpt["classes"]), pretrained=False)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def train_command(dataset: str | Path, out: str | Path, epochs: int = 15, seed: int = 0) -> Path:
    """Entry point for `lineinspect train`: returns the checkpoint path."""
    return train(dataset, out, epochs=epochs, seed=seed).checkpoint


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
