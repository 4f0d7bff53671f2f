"""A dataset folder as the commands see it: `good/`, one folder per defect class, optional masks in
`ground_truth/<class>/<name>_mask.png`, and an optional `dataset.json` describing the images:
`"roi": [x, y, w, h]` (where the part lies on the frame; without it the whole image is used) and
`"classes": [...]` (the model's class order, "good" first; without it, defect classes by name) and
`"color": "gray" | "rgb"` (without it: gray unless the first good image is a colour image) and
`"augmentation": {...}` (what good parts may vary in; models.augmentation) and `"input_size"` or
`"smallest_defect_px"` (the network's input side; models.resolution).

What it does: lists a dataset's classes ("good" first, then the defect classes by name) and image
files after `dataset_check` finds no error; a malformed folder raises one `DatasetError` that names
the first problem (and how many more there are). Not here: decoding images for training
(train.py) or evaluation (evaluate.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from models.dataset_check import IMAGE_SUFFIXES, INFO_FILE, DatasetInfo, check_dataset


class DatasetError(ValueError):
    """A dataset folder that cannot be used; the message names the folder and the problem."""


@dataclass(frozen=True, kw_only=True)
class Layout(DatasetInfo):
    """A usable dataset: what its dataset.json says, checked (DatasetInfo; classes "good" first, then
    dataset.json's order or else the defect classes by name), and where its images are."""

    root: Path
    images: dict[str, list[Path]]


def list_dataset(path: str | Path) -> Layout:
    """The dataset's layout, or DatasetError naming the first problem `dataset_check` finds."""
    root = Path(path)
    report = check_dataset(root)
    if report.info is None:
        more = f" (and {len(report.errors) - 1} more; see `lineinspect dataset check {root}`)"
        raise DatasetError(f"{root}: not a usable dataset: {report.errors[0]}{more if len(report.errors) > 1 else ''}")
    info = report.info
    images = {
        c: sorted(f for f in (root / c).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        for c in info.classes
    }
    return Layout(root=root, images=images, **vars(info))


def write_info(root: Path, roi: tuple[int, int, int, int] | None, **extra: object) -> None:
    """Write dataset.json: the ROI, and any `extra` facts (a generator's per-image difficulty)."""
    info = {"roi": list(roi) if roi is not None else None, **extra}
    (root / INFO_FILE).write_text(json.dumps(info) + "\n")
