"""`lineinspect dataset check PATH`: is a folder a usable inspection dataset?

Layout (MVTec-AD style): `PATH/good/`, one folder per defect class, optional masks in
`PATH/ground_truth/<class>/<name>_mask.png`. Reports counts, balance, image sizes, exact duplicates,
unreadable files and missing or orphan masks. Errors make the dataset unusable for training;
warnings are worth reading. Not here: loading for training (models/train.py).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
IMBALANCE_WARN = 3.0
"""Largest class / smallest class above this ratio is worth a warning."""


@dataclass
class DatasetReport:
    root: Path
    counts: dict[str, int] = field(default_factory=dict)
    sizes: Counter[str] = field(default_factory=Counter)
    masks: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

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
            except (UnidentifiedImageError, OSError) as exc:
                report.errors.append(f"{rel} cannot be read: {exc}")
        _check_masks(root, name, files, report)
    for group in seen.values():
        if len(group) > 1:
            report.warnings.append(f"identical images: {', '.join(group[:4])}{' …' if len(group) > 4 else ''}")
    counts = [n for n in report.counts.values() if n]
    if counts and max(counts) / min(counts) > IMBALANCE_WARN:
        report.warnings.append(f"classes are imbalanced: {min(counts)} to {max(counts)} images")
    if len(report.sizes) > 1:
        report.warnings.append(f"images come in {len(report.sizes)} sizes/modes; they are resized to the model input")
    return report


def _check_masks(root: Path, name: str, files: list[Path], report: DatasetReport) -> None:
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
        report.warnings.append(f"{name}/: no masks; the defect map falls back to a class-activation map")
    orphans = sorted(masks - expected)
    if orphans:
        report.warnings.append(f"ground_truth/{name}/: {len(orphans)} mask(s) without an image, e.g. {orphans[0]}")
