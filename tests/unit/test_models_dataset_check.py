"""`dataset check` on a generated dataset and on malformed ones: clear messages, nothing guessed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from models.dataset_check import check_dataset
from models.synthetic import make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds") / "parts", per_class=4, seed=11)


def test_a_generated_dataset_is_ok(dataset: Path) -> None:
    report = check_dataset(dataset)
    assert report.ok, report.text()
    assert report.counts == {"good": 4, "crack": 4, "scratch": 4, "spot": 4}
    assert report.masks["scratch"] == 4 and report.masks["good"] == 0
    assert "OK" in report.text()


def test_malformed_datasets_name_the_problem(dataset: Path, tmp_path: Path) -> None:
    assert check_dataset(tmp_path / "nope").errors == [f"{tmp_path / 'nope'} is not a folder"]
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    (broken / "scratch" / "bad.png").write_bytes(b"not a png")
    shutil.rmtree(broken / "good")
    (broken / "crack" / "x.png").unlink(missing_ok=True)
    report = check_dataset(broken)
    assert not report.ok
    assert any("no good/ folder" in e for e in report.errors)
    assert any("scratch/bad.png cannot be read" in e for e in report.errors)


def test_duplicates_missing_masks_and_imbalance_are_warned(dataset: Path, tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    first = sorted((ds / "spot").glob("*.png"))[0]
    shutil.copy(first, ds / "spot" / "copy.png")
    for i in range(20):
        shutil.copy(sorted((ds / "good").glob("*.png"))[0], ds / "good" / f"dup{i}.png")
    report = check_dataset(ds)
    assert report.ok
    text = "\n".join(report.warnings)
    assert "identical images" in text
    assert "spot/: 1 image(s) without a mask, e.g. copy_mask.png" in text
    assert "imbalanced" in text


def _rewrite_info(root: Path, **changes: object) -> None:
    import json

    info = json.loads((root / "dataset.json").read_text())
    info.update(changes)
    (root / "dataset.json").write_text(json.dumps(info))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: _rewrite_info(r, roi=[16, 16, 200, 128]), "roi [16, 16, 200, 128] does not fit 16 image(s)"),
        (lambda r: _rewrite_info(r, roi=[0, 0, 0, 10]), "roi must be [x, y, w, h] with x, y >= 0 and w, h > 0"),
        (lambda r: _rewrite_info(r, classes=["good", "spot"]), "classes must list every class folder once"),
        (lambda r: _rewrite_info(r, classes=["good", "crack", "scratch", 7]), "classes must list every class"),
        (lambda r: _rewrite_info(r, color="cmyk"), 'color must be "gray" or "rgb"'),
        (lambda r: (r / "dataset.json").write_text("{roi:"), "dataset.json: not valid JSON"),
        (lambda r: Image.new("L", (20, 20)).save(r / "ground_truth" / "spot" / "0001_mask.png"),
         "ground_truth/spot/0001_mask.png is 20x20, its image spot/0001.png is 160x160"),
        (lambda r: Image.new("I;16", (160, 160), 40000).save(r / "good" / "0002.png"),
         "good/0002.png is a I;16 image (16-bit or float); convert it to 8-bit"),
        (lambda r: _rewrite_info(r, augmentation={"blurr": 1}), "augmentation has unknown setting(s) ['blurr']"),
        (lambda r: _rewrite_info(r, augmentation={"rotation_deg": 90}), "augmentation.rotation_deg must be a number"),
        (lambda r: _rewrite_info(r, augmentation={"dihedral": "yes"}), "augmentation.dihedral must be true or false"),
        (lambda r: _rewrite_info(r, input_size=100), "input_size must be a multiple of 16 in 64..512"),
        (lambda r: _rewrite_info(r, input_size=256, smallest_defect_px=2), "not both"),
        (lambda r: _rewrite_info(r, smallest_defect_px=0), "smallest_defect_px must be a positive number"),
    ],
)
def test_unusable_images_masks_and_dataset_json_are_errors(dataset: Path, tmp_path: Path, damage, message) -> None:
    from models.dataset import DatasetError, list_dataset

    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    damage(broken)
    report = check_dataset(broken)
    assert any(message in e for e in report.errors), report.errors
    with pytest.raises(DatasetError, match="not a usable dataset"):
        list_dataset(broken)  # what train and evaluate call: one error naming the first problem


def test_the_input_side_follows_the_smallest_defect_and_a_shrunk_roi_is_warned(dataset: Path, tmp_path: Path) -> None:
    from models.dataset import list_dataset

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    assert list_dataset(ds).input_size == 128  # the default
    _rewrite_info(ds, smallest_defect_px=2)  # a 2 px scratch on the 128 px ROI must span 4 px: 256
    assert list_dataset(ds).input_size == 256
    assert not any("px" in w for w in check_dataset(ds).warnings)  # 2 px at 2x: enough
    _rewrite_info(ds, smallest_defect_px=0.5)  # would need 1024 px: the side stops at 512, and says so
    assert list_dataset(ds).input_size == 512
    assert any("spans 2.0 px at the largest input side" in w for w in check_dataset(ds).warnings)
    _rewrite_info(ds, smallest_defect_px=None, input_size=64)
    report = check_dataset(ds)
    assert report.ok and any("the 128 px ROI is seen at 64 px (0.50x)" in w for w in report.warnings)
    _rewrite_info(ds, input_size=None, augmentation={"blur_sigma": 0.5, "dihedral": False})
    aug = list_dataset(ds).augmentation
    assert aug.blur_sigma == 0.5 and not aug.dihedral and aug.pseudo_anomalies == 0.5  # the rest: defaults
