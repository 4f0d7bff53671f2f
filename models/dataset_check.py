"""`lineinspect dataset check PATH`: is a folder a usable inspection dataset?

Layout (MVTec-AD style): `PATH/good/`, one folder per defect class, optional masks in
`PATH/ground_truth/<class>/<name>_mask.png`, optional `PATH/dataset.json` (ROI, class order, colour:
see models/dataset.py). Reports counts, balance, image sizes, exact duplicates, unreadable or
unsupported (16-bit) images, missing, orphan or mis-sized masks, and a dataset.json that does not
fit the images. Errors make the dataset unusable; warnings are worth reading. Not here: loading
for training (models/train.py).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from models.augmentation import Augmentation
from models.resolution import DEFAULT_SIDE, input_side, resolution_note

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
IMBALANCE_WARN = 3.0
"""Largest class / smallest class above this ratio is worth a warning."""
INFO_FILE = "dataset.json"
EIGHT_BIT_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"}
"""Pillow modes whose samples are 8-bit; 16-bit and float images would be clipped by conversion."""
COLOUR_MODES = {"RGB", "RGBA", "RGBX", "CMYK", "YCbCr"}


@dataclass(frozen=True)
class DatasetInfo:
    """What dataset.json says, checked, with defaults filled in."""

    roi: tuple[int, int, int, int] | None
    classes: tuple[str, ...]
    color: str  # "gray" or "rgb"
    augmentation: Augmentation = field(default_factory=Augmentation)
    input_size: int = DEFAULT_SIDE
    """The network's input side (models.resolution)."""
    smallest_defect_px: float | None = None


@dataclass
class DatasetReport:
    root: Path
    counts: dict[str, int] = field(default_factory=dict)
    sizes: Counter[str] = field(default_factory=Counter)
    masks: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: DatasetInfo | None = None
    """Set when the folder and its dataset.json are usable."""

    @property
    def ok(self) -> bool:
        return not self.errors

    def text(self) -> str:
        lines = [f"dataset {self.root}"]
        for name, n in self.counts.items():
            lines.append(f"  {name:<16} {n:>6} images   {self.masks.get(name, 0):>6} masks")
        lines.append("  sizes: " + ", ".join(f"{s} ×{n}" for s, n in self.sizes.most_common()))
        lines += [f"error: {e}" for e in self.errors] + [f"warning: {w}" for w in self.warnings]
        lines.append("OK" if self.ok else f"{len(self.errors)} error(s)")
        return "\n".join(lines)


def check_dataset(path: str | Path) -> DatasetReport:
    root = Path(path)
    report = DatasetReport(root)
    if not root.is_dir():
        report.errors.append(f"{root} is not a folder")
        return report
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "ground_truth")
    if "good" not in classes:
        report.errors.append(f"{root} has no good/ folder (one folder of good images is required)")
    if not [c for c in classes if c != "good"]:
        report.errors.append(f"{root} has no defect class folder beside good/")
    seen: dict[str, list[str]] = defaultdict(list)
    dims: dict[str, tuple[int, int]] = {}  # "class/file" -> (width, height)
    modes: list[str] = []
    for name in ["good", *[c for c in classes if c != "good"]] if "good" in classes else classes:
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        others = [f.name for f in (root / name).iterdir() if f.is_file() and f.suffix.lower() not in IMAGE_SUFFIXES]
        if others:
            report.warnings.append(f"{name}/: {len(others)} non-image file(s) ignored, e.g. {others[0]}")
        report.counts[name] = len(files)
        if not files:
            report.errors.append(f"{name}/ has no images")
        for f in files:
            rel = f"{name}/{f.name}"
            try:
                with Image.open(f) as im:
                    im.load()
                    report.sizes[f"{im.width}x{im.height} {im.mode}"] += 1
                    seen[hashlib.sha256(im.tobytes()).hexdigest()].append(rel)
                    dims[rel] = (im.width, im.height)
                    modes.append(im.mode)
                    if im.mode not in EIGHT_BIT_MODES:
                        report.errors.append(f"{rel} is a {im.mode} image (16-bit or float); convert it to 8-bit")
            except (UnidentifiedImageError, OSError) as exc:
                report.errors.append(f"{rel} cannot be read: {exc}")
        _check_masks(root, name, files, report, dims)
    for group in seen.values():
        if len(group) > 1:
            report.warnings.append(f"identical images: {', '.join(group[:4])}{' …' if len(group) > 4 else ''}")
    counts = [n for n in report.counts.values() if n]
    if counts and max(counts) / min(counts) > IMBALANCE_WARN:
        report.warnings.append(f"classes are imbalanced: {min(counts)} to {max(counts)} images")
    if len(report.sizes) > 1:
        report.warnings.append(f"images come in {len(report.sizes)} sizes/modes; they are resized to the model input")
    info = _check_info(root, tuple(report.counts), dims, modes[:1], report)
    report.info = info if report.ok else None
    return report


def _check_info(
    root: Path, folders: tuple[str, ...], dims: dict[str, tuple[int, int]], first_mode: list[str], report: DatasetReport
) -> DatasetInfo | None:
    """Check dataset.json against the folders and images; None (and errors) where it does not fit."""
    where = f"{INFO_FILE}:"
    info: dict[str, Any] = {}
    if (root / INFO_FILE).exists():
        try:
            info = json.loads((root / INFO_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            report.errors.append(f"{where} not valid JSON ({exc})")
            return None
        if not isinstance(info, dict):
            report.errors.append(f"{where} must hold a JSON object")
            return None
    roi = info.get("roi")
    if roi is not None:
        if not (isinstance(roi, list) and len(roi) == 4 and all(type(v) is int for v in roi)
                and roi[0] >= 0 and roi[1] >= 0 and roi[2] > 0 and roi[3] > 0):  # fmt: skip
            report.errors.append(f"{where} roi must be [x, y, w, h] with x, y >= 0 and w, h > 0, got {roi!r}")
            return None
        x, y, w, h = roi
        too_small = sorted(rel for rel, (iw, ih) in dims.items() if x + w > iw or y + h > ih)
        if too_small:
            report.errors.append(f"{where} roi {roi} does not fit {len(too_small)} image(s), e.g. {too_small[0]} "
                                 f"({dims[too_small[0]][0]}x{dims[too_small[0]][1]})")  # fmt: skip
            return None
    classes = ("good", *sorted(c for c in folders if c != "good"))
    declared = info.get("classes")
    if declared is not None:
        if not (isinstance(declared, list) and all(isinstance(c, str) for c in declared)
                and declared[:1] == ["good"] and sorted(declared) == sorted(classes)):  # fmt: skip
            report.errors.append(f"{where} classes must list every class folder once, good first; "
                                 f"got {declared!r}, folders are {list(classes)}")  # fmt: skip
            return None
        classes = tuple(declared)
    color = info.get("color")
    if color is None:
        color = "rgb" if first_mode and first_mode[0] in COLOUR_MODES else "gray"
    elif color not in ("gray", "rgb"):
        report.errors.append(f'{where} color must be "gray" or "rgb", got {color!r}')
        return None
    roi_side = max(roi[2:]) if roi is not None else max((max(d) for d in dims.values()), default=DEFAULT_SIDE)
    try:
        augmentation = Augmentation.from_info(info.get("augmentation"))
        side = input_side(info, roi_side)
    except ValueError as e:
        report.errors.append(f"{where} {e}")
        return None
    smallest = info.get("smallest_defect_px")
    note = resolution_note(roi_side, side, smallest)
    if note:
        report.warnings.append(note)
    return DatasetInfo(tuple(roi) if roi is not None else None, classes, color, augmentation, side,  # type: ignore[arg-type]
                       smallest)  # fmt: skip


def _check_masks(
    root: Path, name: str, files: list[Path], report: DatasetReport, dims: dict[str, tuple[int, int]]
) -> None:
    mask_dir = root / "ground_truth" / name
    masks = {m.name for m in mask_dir.glob("*_mask.png")} if mask_dir.is_dir() else set()
    report.masks[name] = len(masks)
    if name == "good":
        if masks:
            report.warnings.append("ground_truth/good/ has masks; good images need none (their mask is empty)")
        return
    expected = {f"{f.stem}_mask.png" for f in files}
    missing = sorted(expected - masks)
    if masks and missing:
        report.warnings.append(f"{name}/: {len(missing)} image(s) without a mask, e.g. {missing[0]} "
                               "(their defect map is learnt from the class only)")  # fmt: skip
    elif not masks and files:
        report.warnings.append(f"{name}/: no masks; the defect map is the anomaly map (each cell's distance from "
                               "good parts)")
    for f in files:
        mask, rel = mask_dir / f"{f.stem}_mask.png", f"{name}/{f.name}"
        if mask.name not in masks or rel not in dims:
            continue
        try:
            with Image.open(mask) as im:
                im.load()
                size = (im.width, im.height)
        except (UnidentifiedImageError, OSError) as exc:
            report.errors.append(f"ground_truth/{name}/{mask.name} cannot be read: {exc}")
            continue
        if size != dims[rel]:
            w, h = dims[rel]
            report.errors.append(f"ground_truth/{name}/{mask.name} is {size[0]}x{size[1]}, its image {rel} is {w}x{h}")
    orphans = sorted(masks - expected)
    if orphans:
        report.warnings.append(f"ground_truth/{name}/: {len(orphans)} mask(s) without an image, e.g. {orphans[0]}")
