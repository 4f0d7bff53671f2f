"""The SQLite journal against a real database file: what a restarted controller finds there."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from controller.errors import JournalError
from controller.journal import SqliteJournal, alarm_counts, read_image
from controller.ports import PartRecord
from controller.resume import Recorded
from controller.tracking import GateCounters, Outcome


def rec(seq: int, outcome: str = "pass", image: np.ndarray | None = None) -> PartRecord:
    return PartRecord(epoch=7, seq=seq, outcome=outcome, reason=f"model_{outcome}", trigger_pos=seq * 500,
                      image=image)  # fmt: skip


def test_a_second_controller_finds_the_first_ones_records_baseline_and_alarms(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    first_read = GateCounters(10, 2, 3, 0, watchdog_tripped=False)

    async def first_controller() -> None:
        async with SqliteJournal(path) as j:
            assert await j.first_read(7, first_read) == first_read
            await j.record_many([rec(11, image=np.full((4, 6), 9, np.uint8)), rec(12, "reject")])
            await j.note_written(7, 11, 1.5)
            await j.note_alarm("plc_watchdog", True, "tripped")

    async def second_controller() -> tuple[GateCounters, list[Recorded]]:
        async with SqliteJournal(path) as j:
            later = GateCounters(40, 5, 9, 1, watchdog_tripped=True)
            baseline = await j.first_read(7, later)  # the epoch's first read stays the first one's
            await j.note_alarm("plc_watchdog", False, "")
            return baseline, sorted(await j.recorded(7), key=lambda r: r.seq)

    asyncio.run(first_controller())
    baseline, recorded = asyncio.run(second_controller())
    assert baseline == first_read
    assert recorded == [Recorded(11, Outcome.PASS, True), Recorded(12, Outcome.REJECT, False)]
    db = sqlite3.connect(path)
    assert alarm_counts(db) == {"plc_watchdog": {"raised": 1, "cleared": 1}}
    image = read_image(db, 7, 11)
    assert image is not None and image.shape == (4, 6) and int(image[0, 0]) == 9


def test_records_written_together_land_together_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"

    async def run() -> None:
        async with SqliteJournal(path) as j:
            await j.record(rec(1))
            bad = rec(3)
            bad.trigger_pos = object()  # type: ignore[assignment]  # sqlite cannot store it
            with pytest.raises(JournalError, match=r"seq 2 and 1 more"):
                await j.record_many([rec(2), bad])
            assert not j.healthy

    asyncio.run(run())
    seqs = [s for (s,) in sqlite3.connect(path).execute("SELECT seq FROM parts ORDER BY seq")]
    assert seqs == [1]
