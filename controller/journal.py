"""The part journal: every trigger's one outcome, durable before the PLC may act on a PASS.

SQLite in WAL mode with `synchronous=FULL`: once `record` returns, the row survives a crash or
power loss. One writer thread owns the connection so fsyncs never block the event loop. Frames are
kept (zlib) for review and retraining, up to `max_images`; the oldest images are evicted first,
records are never evicted by images. A record is keyed by (epoch, seq): recording it again replaces
it, so a part that failed after its first record still has exactly one outcome.
It also keeps, per epoch, the PLC's gate counters at the first read (a restarted controller learns
from them what happened while it was down: controller/resume.py), and every alarm raised or cleared.
Not here: deciding outcomes (controller/app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, fields
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import numpy as np

from controller.errors import JournalError
from controller.ports import PartRecord
from controller.resume import Recorded
from controller.tracking import GateCounters, Outcome

T = TypeVar("T")

_COLUMNS = [f.name for f in fields(PartRecord) if f.name != "image"]

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS parts (
    {", ".join(_COLUMNS)}, t_written REAL,
    PRIMARY KEY (epoch, seq)
);
CREATE TABLE IF NOT EXISTS images (
    epoch INTEGER, seq INTEGER, height INTEGER, width INTEGER, channels INTEGER, data BLOB,
    PRIMARY KEY (epoch, seq)
);
CREATE TABLE IF NOT EXISTS epochs (
    epoch INTEGER PRIMARY KEY, decided_seq INTEGER, rejects_vision INTEGER, rejects_failsafe INTEGER,
    watchdog_trips INTEGER, wall_utc TEXT
);
CREATE TABLE IF NOT EXISTS alarms (wall_utc TEXT, name TEXT, raised INTEGER, detail TEXT);
"""


class SqliteJournal:
    def __init__(self, path: Path, *, max_images: int = 20000) -> None:
        self.path = path
        self.max_images = max_images
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._healthy = False
        self.error: str | None = None

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def __aenter__(self) -> SqliteJournal:
        try:
            await self._run(self._open)
        except (sqlite3.Error, OSError) as exc:
            self._pool.shutdown()
            raise JournalError(f"journal {self.path} cannot be opened: {exc}") from exc
        self._healthy = True
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._run(self._close)
        self._pool.shutdown()

    async def record(self, rec: PartRecord) -> None:
        await self.record_many([rec])

    async def record_many(self, recs: list[PartRecord]) -> None:
        """Durable in one transaction (one fsync), all or none."""
        try:
            await self._run(self._insert, recs)
        except (sqlite3.Error, OSError) as exc:
            self._healthy = False
            self.error = str(exc)
            which = f"epoch {recs[0].epoch} seq {recs[0].seq}" + (f" and {len(recs) - 1} more" if len(recs) > 1 else "")
            raise JournalError(f"journal write failed for {which}: {exc}") from exc
        self._healthy = True

    async def first_read(self, epoch: int, gate: GateCounters) -> GateCounters:
        """The gate counters of the first read of `epoch`: `gate` itself the first time the epoch is
        seen, and what an earlier controller stored when it saw it first (we were restarted)."""
        try:
            return await self._run(self._first_read, epoch, gate)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"journal cannot store epoch {epoch}: {exc}") from exc

    async def recorded(self, epoch: int) -> list[Recorded]:
        """Every part recorded in `epoch`: its outcome and whether its verdict write was acknowledged."""
        try:
            return await self._run(self._recorded, epoch)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"journal cannot be read: {exc}") from exc

    async def note_alarm(self, name: str, raised: bool, detail: str) -> None:
        """The alarm history (diagnostic: an alarm is shown live whether or not this lands)."""
        with contextlib.suppress(sqlite3.Error):
            await self._run(self._insert_alarm, name, raised, detail)

    async def note_written(self, epoch: int, seq: int, t_written: float) -> None:
        """When the verdict reached the PLC (diagnostic; not needed for durability)."""
        try:
            await self._run(self._update_written, epoch, seq, t_written)
        except sqlite3.Error:
            pass  # the outcome itself is already durable; a missing timestamp is harmless

    async def amend(self, epoch: int, seq: int, outcome: str, reason: str) -> None:
        """What the gate did, learned after the decision, replaces the recorded outcome and reason."""
        try:
            await self._run(self._amend, epoch, seq, outcome, reason)
        except (sqlite3.Error, OSError) as exc:
            self._healthy = False
            self.error = str(exc)
            raise JournalError(f"journal amend failed for epoch {epoch} seq {seq}: {exc}") from exc

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        # A dedicated thread per journal: sqlite3 connections are not shared across threads.
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # ------------------------------------------------------------------ writer thread only
    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        self._db = db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.OperationalError("journal is closed")
        return self._db

    def _insert(self, recs: list[PartRecord]) -> None:
        db = self._connection()
        db.execute("BEGIN")
        try:
            db.executemany(
                f"INSERT OR REPLACE INTO parts ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                [astuple(rec)[: len(_COLUMNS)] for rec in recs],
            )
            for rec in recs:
                if rec.image is not None and self.max_images > 0:
                    self._insert_image(db, rec)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _insert_image(self, db: sqlite3.Connection, rec: PartRecord) -> None:
        img = np.ascontiguousarray(rec.image)
        channels = 1 if img.ndim == 2 else img.shape[2]
        db.execute(
            "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?)",
            (rec.epoch, rec.seq, img.shape[0], img.shape[1], channels, zlib.compress(img.tobytes(), 1)),
        )
        db.execute("DELETE FROM images WHERE rowid <= (SELECT max(rowid) FROM images) - ?", (self.max_images,))

    def _first_read(self, epoch: int, gate: GateCounters) -> GateCounters:
        db = self._connection()
        db.execute(
            "INSERT OR IGNORE INTO epochs VALUES (?, ?, ?, ?, ?, ?)",
            (epoch, gate.decided_seq, gate.rejects_vision, gate.rejects_failsafe, gate.watchdog_trips, _utc()),
        )
        row = db.execute("SELECT decided_seq, rejects_vision, rejects_failsafe, watchdog_trips FROM epochs "
                         "WHERE epoch = ?", (epoch,)).fetchone()  # fmt: skip
        decided_seq, rejects_vision, rejects_failsafe, watchdog_trips = row
        return GateCounters(decided_seq, rejects_vision, rejects_failsafe, watchdog_trips, watchdog_tripped=False)

    def _recorded(self, epoch: int) -> list[Recorded]:
        rows = self._connection().execute(
            "SELECT seq, outcome, t_written IS NOT NULL FROM parts WHERE epoch = ?", (epoch,)
        )
        return [Recorded(seq, Outcome(outcome), bool(written)) for seq, outcome, written in rows]

    def _insert_alarm(self, name: str, raised: bool, detail: str) -> None:
        self._connection().execute("INSERT INTO alarms VALUES (?, ?, ?, ?)", (_utc(), name, int(raised), detail))

    def _amend(self, epoch: int, seq: int, outcome: str, reason: str) -> None:
        self._connection().execute("UPDATE parts SET outcome = ?, reason = ? WHERE epoch = ? AND seq = ?",
                         (outcome, reason, epoch, seq))  # fmt: skip

    def _update_written(self, epoch: int, seq: int, t: float) -> None:
        if self._db is not None:
            self._db.execute("UPDATE parts SET t_written = ? WHERE epoch = ? AND seq = ?", (t, epoch, seq))


def _utc() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def alarm_counts(db: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """How often each alarm was raised and cleared, over every controller that used this journal."""
    rows = db.execute("SELECT name, sum(raised), sum(1 - raised) FROM alarms GROUP BY name ORDER BY name")
    return {name: {"raised": raised, "cleared": cleared} for name, raised, cleared in rows}


def read_image(db: sqlite3.Connection, epoch: int, seq: int) -> np.ndarray | None:
    """The stored frame of a part, or None if it was never stored or was evicted."""
    row = db.execute(
        "SELECT height, width, channels, data FROM images WHERE epoch = ? AND seq = ?", (epoch, seq)
    ).fetchone()
    if row is None:
        return None
    h, w, ch, data = row
    shape = (h, w) if ch == 1 else (h, w, ch)
    return np.frombuffer(zlib.decompress(data), dtype=np.uint8).reshape(shape)
