"""`dataset add-from-journal`: labelled frames from a real journal into a dataset folder, once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
from PIL import Image

from controller.adapters.journal import SqliteJournal
from controller.labels import add_labels
from controller.ports import PartRecord
from models import synthetic
from models.from_journal import add_from_journal


def _journal(path: Path, frames: dict[int, np.ndarray]) -> None:
    async def fill() -> None:
        async with SqliteJournal(path) as j:
            for seq, frame in frames.items():
                await j.record(PartRecord(epoch=9, seq=seq, outcome="pass", reason="model_pass", trigger_pos=0,
                                          defect_class=0, score=0.2, model_version="m1", image=frame))  # fmt: skip
            await asyncio.sleep(0.2)

    asyncio.run(fill())


def test_labelled_frames_join_their_class_once_with_provenance_and_move_when_relabelled(tmp_path: Path) -> None:
    dataset = synthetic.make_dataset(tmp_path / "ds", per_class=3, seed=1, good=3)
    rng = np.random.default_rng(4)
    frames = {seq: synthetic.render_frame(rng, "dent")[0] for seq in (1, 2, 3)}
    journal = tmp_path / "journal.db"
    _journal(journal, frames)
    add_labels(journal, [(9, 1, "dent"), (9, 2, "dent")], source="operator", labeled_by="ann", note="new type")
    add_labels(journal, [(9, 3, "good")], source="simulator", labeled_by="sim")  # not a person: not taken

    first = add_from_journal(journal, dataset, line="L1")
    assert first["added"] == {"dent": 2} and first["check_ok"], first["check"]
    added = sorted((dataset / "dent").iterdir())
    assert [p.name for p in added] == ["journal-L1-9-1.png", "journal-L1-9-2.png"]
    assert np.array_equal(np.asarray(Image.open(added[0])), frames[1])  # the journal's pixels, losslessly
    info = json.loads((dataset / "dataset.json").read_text())
    assert info["classes"][-1] == "dent" and info["classes"][0] == "good"
    provenance = [json.loads(x) for x in (dataset / "provenance.jsonl").read_text().splitlines()]
    assert {(p["result_id"], p["labeled_by"], p["line"], p["line_said"]["outcome"]) for p in provenance} == {
        ("9/1", "ann", "L1", "pass"), ("9/2", "ann", "L1", "pass")}

    again = add_from_journal(journal, dataset, line="L1")
    assert again["added"] == {} and again["already_in_dataset"] == 2
    add_labels(journal, [(9, 2, "crack")], source="review", labeled_by="bob")  # a reviewer corrects ann
    moved = add_from_journal(journal, dataset, line="L1")
    assert moved["moved_to_new_class"] == 1 and moved["added"] == {}
    assert (dataset / "crack" / "journal-L1-9-2.png").is_file()
    assert not (dataset / "dent" / "journal-L1-9-2.png").exists()
    assert sum(1 for _ in dataset.glob("*/journal-*.png")) == 2  # never duplicated
