"""`dataset check` on a generated dataset and on malformed ones: clear messages, nothing guessed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
