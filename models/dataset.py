"""A dataset folder as the commands see it: `good/`, one folder per defect class, optional masks in
`ground_truth/<class>/<name>_mask.png`, and an optional `dataset.json` describing the images:
`"roi": [x, y, w, h]` (where the part lies on the frame; without it the whole image is used) and
`"classes": [...]` (the model's class order, "good" first; without it, defect classes by name) and
`"color": "gray" | "rgb"` (without it: gray unless the first good image is a colour image).

What it does: lists a dataset's classes ("good" first, then the defect classes by name) and image
files after `dataset_check` finds no error; a malformed folder raises one `DatasetError` that names
the first problem (and how many more there are). Not here: decoding images for training
(train.py) or evaluation (evaluate.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from models.dataset_check import IMAGE_SUFFIXES, check_dataset
from workers.model_meta import Color

INFO_FILE = "dataset.json"


class DatasetError(ValueError):
    """A dataset folder that cannot be used; the message names the folder and the problem."""


@dataclass(frozen=True)
class Layout:
    root: Path
    classes: tuple[str, ...]
    """"good" first, then the defect classes sorted by name."""
    images: dict[str, list[Path]]
    roi: tuple[int, int, int, int] | None
    color: Color


def read_info(root: Path) -> dict[str, Any]:
    info_file = root / INFO_FILE
    if not info_file.exists():
        return {}
    try:
        info = json.loads(info_file.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{info_file}: not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{info_file}: must hold a JSON object")
    return info


def read_roi(root: Path) -> tuple[int, int, int, int] | None:
    info_file = root / INFO_FILE
    roi = read_info(root).get("roi")
    if roi is None:
        return None
    if not (isinstance(roi, list) and len(roi) == 4 and all(isinstance(v, int) and v >= 0 for v in roi)):
        raise DatasetError(f"{info_file}: roi must be [x, y, w, h] (non-negative integers), got {roi!r}")
    return (roi[0], roi[1], roi[2], roi[3])


def list_dataset(path: str | Path) -> Layout:
    """The dataset's layout, or DatasetError."""
    root = Path(path)
    report = check_dataset(root)
    if not report.ok:
        more = f" (and {len(report.errors) - 1} more; see `lineinspect dataset check {root}`)"
        raise DatasetError(f"{root}: not a usable dataset: {report.errors[0]}{more if len(report.errors) > 1 else ''}")
    classes = ("good", *sorted(c for c in report.counts if c != "good"))
    declared = read_info(root).get("classes")
    if declared is not None:
        if not isinstance(declared, list) or declared[:1] != ["good"] or sorted(declared) != sorted(classes):
            raise DatasetError(f"{root / INFO_FILE}: classes must list every class folder once, good first; "
                               f"got {declared!r}, folders are {list(classes)}")  # fmt: skip
        classes = tuple(declared)
    images = {
        c: sorted(f for f in (root / c).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        for c in classes
    }
    return Layout(root, classes, images, read_roi(root), _color(root, images["good"][0]))


def _color(root: Path, first_good: Path) -> Color:
    declared = read_info(root).get("color")
    if declared is None:
        with Image.open(first_good) as im:
            return "rgb" if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr") else "gray"
    if declared not in ("gray", "rgb"):
        raise DatasetError(f"{root / INFO_FILE}: color must be \"gray\" or \"rgb\", got {declared!r}")
    return declared  # type: ignore[no-any-return]


def write_info(root: Path, roi: tuple[int, int, int, int] | None, **extra: object) -> None:
    """Write dataset.json: the ROI, and any `extra` facts (a generator's per-image difficulty)."""
    info = {"roi": list(roi) if roi is not None else None, **extra}
    (root / INFO_FILE).write_text(json.dumps(info) + "\n")
