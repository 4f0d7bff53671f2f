"""The SQLite journal against a real database file: what a restarted controller finds there."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from controller.adapters import journal as journal_module
from controller.adapters.journal import SqliteJournal, alarm_counts, read_image
from controller.core.resume import Recorded
from controller.core.tracking import GateCounters, Outcome
from controller.errors import JournalError
from controller.ports import PartRecord


def rec(seq: int, outcome: str = "pass", image: np.ndarray | None = None) -> PartRecord:
    return PartRecord(epoch=7, seq=seq, outcome=outcome, reason=f"model_{outcome}", trigger_pos=seq * 500,
                      written_verdict=outcome, image=image)  # fmt: skip


def counters(decided: int, failsafe: int = 0) -> GateCounters:
    return GateCounters(decided, 0, failsafe, 0, watchdog_tripped=False)


def test_a_restarted_controller_finds_the_resume_point_records_and_alarms(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"

    async def first_controller() -> None:
        async with SqliteJournal(path) as j:
            assert await j.resume_point(7, counters(10)) == counters(10)  # a new epoch: here it starts
            await j.record_many([rec(11, image=np.full((4, 6), 9, np.uint8)), rec(12, "reject")])
            await j.note_written(7, 12, 1.5)  # the PLC acknowledged 12's write, not (yet) 13's
            j.gate_reconciled(7, counters(11))  # the next transaction carries it
            await j.record(rec(13))
            await j.note_alarm("plc_watchdog", True, "tripped")

    async def second_controller() -> tuple[GateCounters, list[Recorded]]:
        async with SqliteJournal(path) as j:
            since = await j.resume_point(7, counters(40, failsafe=9))  # not a new epoch: the stored point
            await j.note_alarm("plc_watchdog", False, "")
            return since, sorted(await j.recorded(7, since.decided_seq, 40), key=lambda r: r.seq)

    asyncio.run(first_controller())
    since, recorded = asyncio.run(second_controller())
    assert since == counters(11)
    assert recorded == [Recorded(12, Outcome.REJECT, Outcome.REJECT, acked=True, trigger_pos=6000),
                        Recorded(13, Outcome.PASS, Outcome.PASS, acked=False, trigger_pos=6500)]
    db = sqlite3.connect(path)
    assert alarm_counts(db) == {"plc_watchdog": {"raised": 1, "cleared": 1}}
    image = read_image(db, 7, 11)
    assert image is not None and image.shape == (4, 6) and int(image[0, 0]) == 9


def test_records_and_amendments_apply_in_call_order(tmp_path: Path) -> None:
    async def run() -> str:
        async with SqliteJournal(tmp_path / "journal.db") as j:
            await j.record(rec(1))
            # Queued at the call: the amendment lands after the record made before it, unawaited.
            first, second = j.record(rec(2)), j.amend(7, 2, "failsafe", "watchdog_tripped")
            await asyncio.gather(second, first)
            row = sqlite3.connect(j.path).execute("SELECT reason FROM parts WHERE seq = 2").fetchone()
            return str(row[0])

    assert asyncio.run(run()) == "watchdog_tripped"


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


def test_records_queued_together_are_committed_together_and_frames_follow_lazily(tmp_path: Path) -> None:
    """Group commit: records queued while the writer was busy share one transaction (one fsync), in
    call order; the frames come after, in the lazy lane, and are all there once closed. A record
    SQLite cannot store fails its whole group for the callers (they fail those parts safe and record
    them again), but only it is lost: the others are written one by one."""
    path = tmp_path / "journal.db"

    async def run() -> None:
        async with SqliteJournal(path) as j:
            await j.record(rec(1))
            bad = rec(3)
            bad.trigger_pos = object()  # type: ignore[assignment]
            busy = j._pool.submit(time.sleep, 0.2)  # the writer is busy (an fsync) while three are queued
            jobs = [j.record(rec(2, image=np.full((2, 2), 2, np.uint8))), j.record(bad), j.record(rec(4))]
            results = await asyncio.gather(*jobs, return_exceptions=True)
            assert all(isinstance(r, JournalError) for r in results)  # one transaction: all told it failed
            assert busy.done()
            await asyncio.gather(*(j.record(rec(s, image=np.full((2, 2), s, np.uint8))) for s in (5, 6, 7)))

    asyncio.run(run())
    db = sqlite3.connect(path)
    assert [s for (s,) in db.execute("SELECT seq FROM parts ORDER BY seq")] == [1, 2, 4, 5, 6, 7]
    assert all(int(read_image(db, 7, s)[0, 0]) == s for s in (5, 6, 7))  # type: ignore[index]


def test_a_journal_from_an_older_version_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE parts (epoch, seq, outcome, reason, trigger_pos, PRIMARY KEY (epoch, seq))")
    old.execute("INSERT INTO parts VALUES (7, 1, 'pass', 'model_pass', 500)")
    old.commit()
    old.close()

    async def run() -> list[Recorded]:
        async with SqliteJournal(path) as j:
            await j.record(rec(2))
            return sorted(await j.recorded(7, 0, 2), key=lambda r: r.seq)

    assert asyncio.run(run()) == [Recorded(1, Outcome.PASS, None, acked=False, trigger_pos=500),
                                  Recorded(2, Outcome.PASS, Outcome.PASS, acked=False, trigger_pos=1000)]


def test_after_a_failed_record_the_resume_point_stays_where_the_journal_last_agreed(tmp_path: Path) -> None:
    async def run() -> GateCounters:
        async with SqliteJournal(tmp_path / "journal.db") as j:
            await j.resume_point(7, counters(0))
            j.gate_reconciled(7, counters(1))
            await j.record(rec(1))
            bad = rec(2)
            bad.trigger_pos = object()  # type: ignore[assignment]
            with pytest.raises(JournalError):
                await j.record(bad)
            j.gate_reconciled(7, counters(3))
            await j.record(rec(3))  # lands, but part 2 has no record: a restart must look from 1 on
            return await j.resume_point(7, counters(9))

    assert asyncio.run(run()) == counters(1)


def test_an_earlier_plc_runs_rows_of_a_reused_epoch_are_set_aside_not_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.db"
    compress = journal_module._compress_images

    def slow_compress(recs: list[PartRecord]) -> list[tuple[object, ...]]:
        time.sleep(0.2)  # a loaded machine: the frame is still being compressed when the epoch comes round
        return compress(recs)

    monkeypatch.setattr(journal_module, "_compress_images", slow_compress)

    async def run() -> tuple[int, GateCounters, list[Recorded]]:
        async with SqliteJournal(path) as j:
            await j.resume_point(7, counters(0))
            j.gate_reconciled(7, counters(2))
            await j.record_many([rec(1), rec(2, image=np.full((2, 2), 2, np.uint8))])
            assert [r.trigger_pos for r in await j.recorded(7, 0, 2)] == [500, 1000]
            moved = await j.supersede_epoch(7)
            since = await j.resume_point(7, counters(1))  # the epoch starts afresh
            return moved, since, await j.recorded(7, 0, 2)

    moved, since, left = asyncio.run(run())
    assert (moved, since, left) == (2, counters(1), [])
    db = sqlite3.connect(path)
    kept = db.execute("SELECT epoch, seq, outcome, superseded_utc IS NOT NULL FROM parts_superseded ORDER BY seq")
    assert list(kept) == [(7, 1, "pass", 1), (7, 2, "pass", 1)]
    assert read_image(db, 7, 2) is None


async def test_retention_deletes_old_frames_first_then_old_records_and_bounds_the_size(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    import numpy as np

    from controller.adapters.journal import Retention
    from controller.ports import AuditEntry

    def ago(days: float) -> str:
        return (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="milliseconds")

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (96, 96), dtype=np.uint8)  # noise: compresses to ~9 KB
    retention = Retention(images_days=7, records_days=30, every_s=3600)
    async with SqliteJournal(tmp_path / "j.db", retention=retention) as journal:
        for seq, days in enumerate((60, 20, 10, 1, 0), start=1):
            await journal.record(PartRecord(epoch=1, seq=seq, outcome="pass", reason="model_pass", trigger_pos=0,
                                            wall_utc=ago(days), image=frame))  # fmt: skip
        await journal.note_audit(AuditEntry(ago(45), "ann", "operator", "10.0.0.1:1", "halt", "", "done", ""))
        await journal.note_audit(AuditEntry(ago(2), "ann", "operator", "10.0.0.1:1", "reset", "", "done", ""))
        await asyncio.sleep(0.3)  # frames are stored lazily
        assert await journal.apply_retention() == {"images": 3, "parts": 1, "audit": 1}
        with sqlite3.connect(tmp_path / "j.db") as db:
            assert [s for (s,) in db.execute("SELECT seq FROM parts ORDER BY seq")] == [2, 3, 4, 5]
            assert [s for (s,) in db.execute("SELECT seq FROM images ORDER BY seq")] == [4, 5]
            assert [a for (a,) in db.execute("SELECT action FROM audit")] == ["reset"]

    # A size limit: the oldest frames go until the pages in use fit, records stay while frames can go.
    capped = Retention(max_bytes=200_000, every_s=3600)
    async with SqliteJournal(tmp_path / "k.db", retention=capped) as journal:
        for seq in range(1, 61):
            await journal.record(PartRecord(epoch=1, seq=seq, outcome="pass", reason="model_pass", trigger_pos=0,
                                            wall_utc=ago(0), image=frame))  # fmt: skip
        await asyncio.sleep(0.5)
        deleted = await journal.apply_retention()
        with sqlite3.connect(tmp_path / "k.db") as db:
            page, pages, free = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "page_count",
                                                                                   "freelist_count"))  # fmt: skip
            assert (pages - free) * page <= 200_000
            assert db.execute("SELECT count(*) FROM parts").fetchone()[0] == 60
            kept = [s for (s,) in db.execute("SELECT seq FROM images ORDER BY seq")]
        assert deleted["images"] > 0 and kept and kept == list(range(61 - len(kept), 61))


async def test_frames_queued_for_review_are_kept_past_the_count_and_age_limits(tmp_path: Path) -> None:
    """A frame waiting for a person (flagged, disagreeing with the reference, near the threshold)
    outlives the image count limit and the frame age limit; the gate's decisions are stored too."""
    from datetime import UTC, datetime, timedelta

    from controller.adapters.journal import Retention
    from controller.core import plc_codec as c

    old = (datetime.now(UTC) - timedelta(days=30)).isoformat(timespec="milliseconds")
    frame = np.full((8, 8), 9, np.uint8)
    async with SqliteJournal(tmp_path / "j.db", max_images=8, retention=Retention(images_days=7, every_s=3600)) as j:
        await j.record(PartRecord(epoch=1, seq=1, outcome="pass", reason="model_pass", trigger_pos=0, wall_utc=old,
                                  image=frame))  # fmt: skip
        await j.record(PartRecord(epoch=1, seq=2, outcome="pass", reason="model_pass", trigger_pos=0, wall_utc=old,
                                  image=frame))  # fmt: skip
        await j.note_review(1, 1, "near_threshold")
        await j.note_review(1, 1, "flagged")  # an operator's flag outranks the line's own reason ...
        await j.note_gate(1, 1, c.DecisionEntry(1, c.REJECT, c.PASS, c.REJECT, c.DECIDED_SHADOW))
        for seq in range(100, 120):  # ... and is never trimmed by their number (the queue keeps max_images/4)
            await j.note_review(1, seq, "near_threshold")
        for seq in range(3, 30):
            await j.record(PartRecord(epoch=1, seq=seq, outcome="pass", reason="model_pass", trigger_pos=0,
                                      wall_utc=datetime.now(UTC).isoformat(timespec="milliseconds"), image=frame))
        await asyncio.sleep(0.3)
        await j.apply_retention()
    with sqlite3.connect(tmp_path / "j.db") as db:
        kept = [s for (s,) in db.execute("SELECT seq FROM images ORDER BY seq")]
        assert kept[0] == 1 and 2 not in kept and len(kept) == 9  # 8 newest + the pinned one
        assert db.execute("SELECT seq, why FROM review_queue WHERE why = 'flagged'").fetchall() == [(1, "flagged")]
        assert db.execute("SELECT count(*) FROM review_queue").fetchone()[0] <= 1 + 8 // 4
        assert db.execute("SELECT gate, vision, reference, flags FROM gate_decisions").fetchall() == [
            (c.REJECT, c.PASS, c.REJECT, c.DECIDED_SHADOW)]
