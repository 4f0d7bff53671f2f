"""The part journal: every trigger's one outcome, durable before the PLC may act on a PASS.

SQLite in WAL mode with `synchronous=FULL`: once `record` returns, the row survives a crash or
power loss. One writer thread owns the connection so fsyncs never block the event loop, and it
serves two lanes: records, amendments, alarms and reads first (the verdict path waits on them),
then, only when none is waiting, the lazy lane in one batch without an fsync of its own: frames
(zlib) for review and retraining and when each verdict's write was acknowledged (`t_written`).
Those reach the disk with the next durable record, and survive the controller being killed (they
are in the OS's cache); a power cut can lose the last of them, never a record. Frames are
kept up to `max_images`; the oldest images are evicted first, records are never evicted by images.
`Retention` bounds the rest by age and size (frames first, then records, alarms and the audit
trail), in short passes in the lazy lane.
A record is keyed by (epoch, seq): recording it again replaces it, so a part that failed after its
first record still has exactly one outcome.
It also keeps, per epoch, the PLC's gate counters up to which the journal agrees with the gate (the
resume point, stored with every record: a restarted controller learns from it what happened while
it was down, controller/core/resume.py), and every alarm raised or cleared.

A bad disk loses no record. Records and amendments whose transaction the disk refused (full,
read-only, I/O error) are kept in memory (bounded) and go first into the next transaction, or into
a retry every `retry_s` while nothing else is written; the connection is reopened after each such
failure. Only a record lost for good (the memory bound, or a record SQLite can never store) freezes
the resume point where the journal last agreed with the gate. At open the file is checked
(`PRAGMA quick_check`): a corrupt journal is moved aside (`moved_aside`) and a fresh one started,
never written into. One controller per journal: an exclusive lock, refused with one clear error.
The journal is healthy only after its first durable write.
Not here: deciding outcomes (controller/app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import numpy as np
import structlog

from controller.adapters.exclusive_lock import hold_exclusive_lock
from controller.core.plc_codec import DecisionEntry as GateDecision
from controller.core.resume import Recorded
from controller.core.tracking import GateCounters, Outcome
from controller.errors import InUseError, JournalError
from controller.ports import AuditEntry, PartRecord

T = TypeVar("T")
log = structlog.get_logger("lineinspect.journal")

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
    watchdog_trips INTEGER, watchdog_tripped INTEGER
);
CREATE TABLE IF NOT EXISTS alarms (wall_utc TEXT, name TEXT, raised INTEGER, detail TEXT);
CREATE TABLE IF NOT EXISTS audit (wall_utc TEXT, user TEXT, role TEXT, peer TEXT, action TEXT, argument TEXT,
                                  result TEXT, detail TEXT);
CREATE TABLE IF NOT EXISTS opened (wall_utc TEXT, pid INTEGER, moved_aside TEXT);
CREATE TABLE IF NOT EXISTS parts_superseded ({", ".join(_COLUMNS)}, t_written REAL, superseded_utc TEXT);
CREATE TABLE IF NOT EXISTS gate_decisions (epoch INTEGER, seq INTEGER, gate INTEGER, vision INTEGER,
                                           reference INTEGER, flags INTEGER, wall_utc TEXT,
                                           PRIMARY KEY (epoch, seq));
CREATE TABLE IF NOT EXISTS review_queue (epoch INTEGER, seq INTEGER, why TEXT, wall_utc TEXT, PRIMARY KEY (epoch, seq));
"""

_NOT_PINNED = ("NOT EXISTS (SELECT 1 FROM review_queue q WHERE q.epoch = images.epoch AND q.seq = images.seq)")
"""A frame waiting for a person's review is kept by count and age limits (the size limit still wins)."""

_DISK_ERRORS = (sqlite3.OperationalError, OSError)
"""What a failing disk raises (full, read-only, I/O error, busy): the same write can succeed later.
Anything else (a value SQLite cannot store) would fail again, but for a corrupt file (`_CORRUPT`):
its writes wait for the fresh journal that replaces it."""


def _refused(exc: BaseException) -> bool:
    """Did the disk or the file refuse the write (it can land later), rather than the write itself?"""
    return isinstance(exc, _DISK_ERRORS) or getattr(exc, "sqlite_errorcode", None) in _CORRUPT


RETAIN_SLICE_S = 0.02
"""Retention's share of the writer at a time: a record waits at most this long behind it."""


@dataclass(frozen=True, slots=True)
class Retention:
    """How long the journal keeps what, and how big it may grow. Frames go first: records (outcome,
    reason, timings), alarms and the audit trail are kept longer."""

    images_days: float | None = None
    records_days: float | None = None
    max_bytes: int | None = None
    """Of pages in use (deleted rows' pages are reused, so the file stops growing near this size)."""
    every_s: float = 300.0
    batch: int = 500
    """Rows looked at per statement; a pass goes on in slices of `RETAIN_SLICE_S` until done."""


class SqliteJournal:
    def __init__(self, path: Path, *, max_images: int = 20000, max_pending: int = 10_000, retry_s: float = 0.5,
                 stall_s: float = 1.0, check_every_s: float = 3600.0,
                 retention: Retention = Retention()) -> None:  # fmt: skip
        self.path = path
        self.retention = retention
        self.retained: dict[str, int] = {}
        """Rows deleted by retention so far, by table."""
        self.check_every_s = check_every_s
        """How often the open journal is checked (`PRAGMA quick_check`, off the writer)."""
        self.stall_s = stall_s
        """A record waiting this long for the disk makes the journal unhealthy until it lands."""
        self.max_images = max_images
        self.max_pending = max_pending
        """Records and amendments kept in memory while the disk refuses them; older ones beyond are lost."""
        self.retry_s = retry_s
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._lock: int | None = None
        """The open lock file: held while this journal is open."""
        self.moved_aside: Path | None = None
        """Where a corrupt journal found at open was moved (a fresh one replaced it)."""
        self._pool = _TwoLaneWriter(f"journal-{path.name}")
        self._compressor = ThreadPoolExecutor(1, thread_name_prefix="journal-images")
        """zlib of the frames, off the writer thread: it only inserts the bytes."""
        self._checkpointer: _Checkpointer | None = None
        self._healthy = False
        self.error: str | None = None
        self._gate: tuple[int, GateCounters] | None = None
        """(epoch, counters): the resume point the next transactions store."""
        self._pending: list[Callable[[], None]] = []
        """Writes the disk refused, oldest first: they go first into the next transaction."""
        self._pending_gate: object = None
        """The resume point the refused writes were to be stored with (retried with them)."""
        self._points: dict[int, GateCounters] = {}
        """Each epoch's resume point as last made durable (a fresh journal starts from them)."""
        self.lost = 0
        """Records and amendments lost for good: the resume point stays where the journal last agreed."""

    @property
    def healthy(self) -> bool:
        return self._healthy and self.stalled_s is None

    @property
    def stalled_s(self) -> float | None:
        """How long the oldest unfinished record or amendment has waited, once that is `stall_s` or more."""
        since = self._pool.urgent_since()
        waited = time.monotonic() - since if since is not None else 0.0
        return waited if waited >= self.stall_s else None

    @property
    def pending(self) -> int:
        """Writes waiting for the disk to take them."""
        return len(self._pending)

    async def __aenter__(self) -> SqliteJournal:
        try:
            await self._run(self._open)
        except (sqlite3.Error, OSError, InUseError) as exc:
            await self._run(self._close)
            self._pool.shutdown()
            if isinstance(exc, InUseError):
                raise
            raise JournalError(f"journal {self.path} cannot be opened: {exc}") from exc
        self._healthy = True  # its first durable write is done
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._compressor.shutdown)  # every frame handed to the lazy lane
        with contextlib.suppress(sqlite3.Error):
            await asyncio.wrap_future(self._pool.submit(_nothing, lazy=True))  # the lazy lane drained first
        if self._checkpointer is not None:
            await loop.run_in_executor(None, self._checkpointer.stop)
        await self._run(self._retry)  # a last try for what the disk refused
        if self._pending:
            log.error("journal_closed_with_unwritten_records", journal=str(self.path), writes=len(self._pending))
        await self._run(self._close)
        self._pool.shutdown()

    def record(self, rec: PartRecord) -> Awaitable[None]:
        return self.record_many([rec])

    def record_many(self, recs: list[PartRecord]) -> Awaitable[None]:
        """Durable in one transaction (one fsync), all or none. Queued at the call: the journal
        applies records and amendments in the order they were made."""
        which = f"epoch {recs[0].epoch} seq {recs[0].seq}" + (f" and {len(recs) - 1} more" if len(recs) > 1 else "")
        durable = self._submit(f"journal write failed for {which}", self._insert_rows, recs, batch="records",
                               meta=self._gate)  # fmt: skip
        images = [rec for rec in recs if rec.image is not None]
        if images and self.max_images > 0:
            compressed = self._compressor.submit(_compress_images, images)
            compressed.add_done_callback(self._store_images)
        return durable

    def _store_images(self, compressed: Future[list[tuple[object, ...]]]) -> None:
        with contextlib.suppress(RuntimeError):  # shut down meanwhile: the frame is not a record
            self._pool.submit(self._insert_images, compressed.result(), lazy=True)

    async def _images_stored(self) -> None:
        """Every frame recorded so far is compressed and in the database (or failed to be)."""
        await asyncio.wrap_future(self._compressor.submit(_nothing))  # one thread: earlier frames' callbacks ran
        await asyncio.wrap_future(self._pool.submit(_nothing, lazy=True))  # the lazy lane keeps call order

    def amend(self, epoch: int, seq: int, outcome: str, reason: str) -> Awaitable[None]:
        """What the gate did, learned after the decision, replaces the recorded outcome and reason.
        Queued at the call, like `record_many`."""
        return self._submit(f"journal amend failed for epoch {epoch} seq {seq}", self._amend, epoch, seq, outcome,
                            reason, batch="records", meta=self._gate)  # fmt: skip

    def gate_reconciled(self, epoch: int, gate: GateCounters) -> None:
        """Every part the PLC decided up to `gate` has its record or amendment queued. Transactions
        queued from now on store `gate` as the epoch's resume point (no extra write, no fsync)."""
        self._gate = (epoch, gate)

    async def resume_point(self, epoch: int, gate: GateCounters) -> GateCounters:
        """The gate counters up to which the journal is known to agree with the gate in `epoch`:
        stored by an earlier controller (we were restarted), or `gate` itself if `epoch` is new."""
        try:
            return await self._run(self._resume_point, epoch, gate)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"journal cannot store epoch {epoch}: {exc}") from exc

    async def recorded(self, epoch: int, after_seq: int, upto_seq: int) -> list[Recorded]:
        """The parts recorded in `epoch` with after_seq < seq <= upto_seq (wrapping at 2^32)."""
        try:
            return await self._run(self._recorded, epoch, after_seq, upto_seq)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"journal cannot be read: {exc}") from exc

    async def supersede_epoch(self, epoch: int) -> int:
        """The PLC's epoch number came round again: this epoch's rows belong to an earlier PLC run.
        They move to `parts_superseded` (with the time), its frames and resume point go, and the
        epoch starts afresh. Returns how many rows moved."""
        try:
            await self._images_stored()  # else an old run's frame could land after, under a new part's seq
            return await self._run(self._supersede, epoch)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"journal cannot set epoch {epoch}'s old rows aside: {exc}") from exc

    async def note_alarm(self, name: str, raised: bool, detail: str) -> None:
        """The alarm history (an alarm is shown live whether or not this lands). With the records,
        not in the lazy lane: an alarm about the disk is kept, like a record, until the disk takes it."""
        with contextlib.suppress(sqlite3.Error, OSError, RuntimeError):  # RuntimeError: journal already closed
            await asyncio.wrap_future(self._pool.submit(self._insert_alarm, _utc(), name, raised, detail,
                                                        batch="records", meta=self._gate))  # fmt: skip

    async def note_audit(self, entry: AuditEntry) -> None:
        """An operator action, in the records lane like an alarm: kept until the disk takes it."""
        with contextlib.suppress(sqlite3.Error, OSError, RuntimeError):  # RuntimeError: journal already closed
            await asyncio.wrap_future(self._pool.submit(self._insert_audit, entry, batch="records", meta=self._gate))

    def note_written(self, epoch: int, seq: int, t_written: float) -> Awaitable[None]:
        """When the PLC acknowledged the verdict's write. Queued at the call; never raises (a
        restarted controller uses it to tell acknowledged writes from the others)."""
        return self._submit(None, self._update_written, epoch, seq, t_written, lazy=True)

    def note_review(self, epoch: int, seq: int, why: str) -> Awaitable[None]:
        """Queue the part for a person's review and pin its frame against retention (the newest
        `max_images // 4` queued parts are pinned). Lazy lane; never raises."""
        return self._submit(None, self._insert_review, epoch, seq, why, _utc(), lazy=True)

    def note_gate(self, epoch: int, seq: int, decision: GateDecision) -> Awaitable[None]:
        """What the PLC's gate did with a part (the decision ring). In the lazy lane: it reaches the
        disk with the next record; never raises."""
        return self._submit(None, self._insert_gate, epoch, seq, decision, _utc(), lazy=True)

    def _submit(self, error: str | None, fn: Callable[..., None], *args: object, lazy: bool = False,
                batch: str | None = None, meta: object = None) -> Awaitable[None]:  # fmt: skip
        """Queue `fn` on the writer thread now, so journal order is call order within each lane. The
        result raises JournalError(error: ...) on failure, or never raises where `error` is None."""
        job = asyncio.wrap_future(self._pool.submit(fn, *args, lazy=lazy, batch=batch, meta=meta))
        return asyncio.ensure_future(self._checked(job, error))

    async def _checked(self, job: Awaitable[None], error: str | None) -> None:
        try:
            await job
        except Exception as exc:  # sqlite3, OS, and anything else a record can raise (zlib, numpy)
            if error is None:
                return
            self._healthy = False
            self.error = str(exc)
            raise JournalError(f"{error}: {exc}") from exc
        if error is not None:
            self._healthy, self.error = True, None

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        # A dedicated thread per journal: sqlite3 connections are not shared across threads.
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    # ------------------------------------------------------------------ writer thread only
    def _open(self) -> None:
        self._pool.batchers = {"lazy": self._lazy_batch, "records": self._record_batch}
        self._pool.idle, self._pool.idle_in = self._retry, lambda: self.retry_s if self._pending else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = hold_exclusive_lock(self.path.with_name(self.path.name + ".lock"), f"journal {self.path}")
        self.moved_aside, why = _move_aside_if_corrupt(self.path)
        if self.moved_aside is not None:
            self.error = f"the journal was corrupt ({why}): moved aside to {self.moved_aside}, a fresh one started"
        self._prepare(self._connection())
        r = self.retention
        retains = r.images_days is not None or r.records_days is not None or r.max_bytes is not None
        self._checkpointer = _Checkpointer(self.path, check_every_s=self.check_every_s, on_corrupt=self._found_corrupt,
                                           retain_every_s=r.every_s if retains else None,
                                           on_retain=self._queue_retention)  # fmt: skip

    def _queue_retention(self) -> None:
        with contextlib.suppress(RuntimeError):  # the writer was shut down meanwhile
            self._pool.submit(self._retain, lazy=True)

    def _found_corrupt(self, why: str) -> None:
        """The scheduled check found the open journal corrupt (checkpointer thread): the writer moves
        it aside before its next write."""
        with contextlib.suppress(RuntimeError):  # closing meanwhile: the next start checks it
            self._pool.submit(self._start_afresh, why.splitlines()[0])

    def _start_afresh(self, why: str) -> None:
        """Writer thread: the corrupt file aside, a fresh one in its place holding this epoch's
        resume point, so records, the resume and the alarm history go on in it."""
        self._disconnect()
        self.moved_aside = _move_aside(self.path)
        self.error = f"the journal was found corrupt ({why}): moved aside to {self.moved_aside}, a fresh one started"
        log.error("journal_moved_aside", journal=str(self.path), aside=str(self.moved_aside), why=why)
        db = self._prepare(self._connection())
        for epoch, counters in self._points.items():  # as last made durable, never a point still queued
            db.execute(f"INSERT OR IGNORE INTO epochs (epoch, {_GATE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                       (epoch, *_gate_values(counters)))  # fmt: skip

    def _prepare(self, db: sqlite3.Connection) -> sqlite3.Connection:
        """Schema up to date, then the first durable write: until it lands the journal is not
        healthy (a read-only file opens and reads fine, and only refuses the first record)."""
        db.executescript(SCHEMA)
        _add_missing_columns(db)
        db.execute("INSERT INTO opened VALUES (?, ?, ?)", (_utc(), os.getpid(), str(self.moved_aside or "")))
        return db

    def _close(self) -> None:
        self._closed = True
        self._disconnect()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _connection(self) -> sqlite3.Connection:
        """The connection, (re)opened if a disk error closed it."""
        if self._closed:
            raise sqlite3.OperationalError("journal is closed")
        if self._db is None:
            db = sqlite3.connect(self.path, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                # Checkpoints copy the WAL into the database and fsync it: hundreds of ms on a busy
                # disk. Not on the writer (a record would wait behind one): a thread of their own.
                db.execute("PRAGMA wal_autocheckpoint=0")
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _disconnect(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    @contextlib.contextmanager
    def _transaction(self, gate: tuple[int, GateCounters] | None) -> Iterator[sqlite3.Connection]:
        """One transaction that also stores the resume point `gate` (unless a write was lost)."""
        db = self._connection()
        try:
            db.execute("BEGIN")
            yield db
            if gate is not None and not self.lost:
                epoch, counters = gate
                db.execute(f"UPDATE epochs SET ({_GATE_COLUMNS}) = (?, ?, ?, ?, ?) WHERE epoch = ?",
                           (*_gate_values(counters), epoch))  # fmt: skip
            db.execute("COMMIT")
        except BaseException as exc:
            # On a full disk or an I/O error SQLite has already rolled back: a ROLLBACK now would
            # raise "no transaction is active" in place of the real error.
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            if _refused(exc):
                self._disconnect()  # a read-only or failed file: the next write opens it afresh
            raise

    def _insert_rows(self, recs: list[PartRecord]) -> None:
        """Inside a transaction of `_record_batch`."""
        self._connection().executemany(
            f"INSERT OR REPLACE INTO parts ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            [astuple(rec)[: len(_COLUMNS)] for rec in recs],
        )

    def _record_batch(self, jobs: list[Callable[[], None]], gate: object) -> None:
        """Group commit: the writes the disk refused before, then those queued since the last
        commit (a verdict path's exchange cycle usually queues one or two), in one transaction,
        storing the last one's resume point."""
        writes = [*self._pending, *jobs]
        try:
            with self._transaction(gate):  # type: ignore[arg-type]
                for write in writes:
                    write()
        except BaseException as exc:
            if _refused(exc):
                self._keep(writes, gate)
                if getattr(exc, "sqlite_errorcode", None) in _CORRUPT:
                    self._start_afresh(str(exc))  # its writes go into the fresh journal
            else:
                self._pending = []
                self._one_by_one(writes)  # only the write SQLite can never store is lost
            raise
        self._pending = []
        if isinstance(gate, tuple) and not self.lost:
            self._points[gate[0]] = gate[1]

    def _keep(self, writes: list[Callable[[], None]], gate: object) -> None:
        kept = writes[-self.max_pending :]
        self.lost += len(writes) - len(kept)
        self._pending, self._pending_gate = kept, gate

    def _one_by_one(self, writes: list[Callable[[], None]]) -> None:
        """A batch failed on a write SQLite cannot store (a value it cannot bind): each write again in
        a transaction of its own, so that only that one is lost (and the resume point frozen)."""
        for i, write in enumerate(writes):
            try:
                with self._transaction(None):
                    write()
            except BaseException as exc:
                if _refused(exc):
                    self._keep(writes[i:], None)
                    return
                self.lost += 1

    def _retry(self) -> None:
        """While writes wait for the disk and nothing else is written: try them again (every `retry_s`)
        with the resume point they were queued with (a later one may cover writes still queued)."""
        if not self._pending:
            return
        with contextlib.suppress(sqlite3.Error, OSError):
            self._record_batch([], self._pending_gate)
            self._healthy, self.error = True, None

    def _insert_images(self, rows: list[tuple[object, ...]]) -> None:
        db = self._connection()
        db.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?)", rows)
        db.execute(f"DELETE FROM images WHERE rowid <= (SELECT max(rowid) FROM images) - ? AND {_NOT_PINNED}",
                   (self.max_images,))  # fmt: skip

    async def apply_retention(self) -> dict[str, int]:
        """One retention pass now (the checkpointer runs one every `retention.every_s`)."""
        await asyncio.wrap_future(self._pool.submit(self._retain, lazy=True))
        return dict(self.retained)

    def _retain(self) -> None:
        """Delete frames, then records, older than their age limit, then the oldest beyond the size
        limit. Runs in the lazy lane for at most `RETAIN_SLICE_S`, then queues itself again: records
        keep their priority, and no statement scans a table (rows are taken oldest first by rowid,
        which follows time, and an age check looks at the oldest rows only)."""
        r, db, now = self.retention, self._connection(), datetime.now(UTC)
        started, deleted = time.monotonic(), dict[str, int]()

        def oldest(table: str, where: str, *args: object, limit: int) -> int:
            """Of the table's `limit` oldest rows, delete those matching `where`."""
            n = db.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} ORDER BY rowid LIMIT ?) "
                           f"AND {where}", (limit, *args)).rowcount  # fmt: skip
            deleted[table] = deleted.get(table, 0) + n
            return n

        def old_frames(cutoff: str) -> int:
            """Of the `batch` oldest frames, delete those whose record is older (or gone)."""
            n = db.execute("DELETE FROM images WHERE rowid IN (SELECT i.rowid FROM (SELECT rowid, epoch, seq FROM "
                           f"images WHERE {_NOT_PINNED} ORDER BY rowid LIMIT ?) i LEFT JOIN parts p USING (epoch, seq) "
                           "WHERE p.wall_utc IS NULL OR p.wall_utc < ?)", (r.batch, cutoff)).rowcount  # fmt: skip
            deleted["images"] = deleted.get("images", 0) + n
            return n

        more = False
        if r.images_days is not None:
            cutoff = (now - timedelta(days=r.images_days)).isoformat(timespec="milliseconds")
            while old_frames(cutoff) and not (more := time.monotonic() - started > RETAIN_SLICE_S):
                pass
        if r.records_days is not None and not more:
            cutoff = (now - timedelta(days=r.records_days)).isoformat(timespec="milliseconds")
            for table in ("parts", "alarms", "audit", "parts_superseded", "opened", "gate_decisions", "review_queue"):
                while oldest(table, "wall_utc < ?", cutoff, limit=r.batch):
                    if more := time.monotonic() - started > RETAIN_SLICE_S:
                        break
        if r.max_bytes is not None and not more:
            while True:
                page, pages, free = (db.execute(f"PRAGMA {p}").fetchone()[0]
                                     for p in ("page_size", "page_count", "freelist_count"))  # fmt: skip
                if (pages - free) * page <= r.max_bytes:
                    break
                if not oldest("images", "1", limit=50) and not oldest("parts", "1", limit=50):
                    break
                if more := time.monotonic() - started > RETAIN_SLICE_S:
                    break
        deleted = {table: n for table, n in deleted.items() if n}
        for table, n in deleted.items():
            self.retained[table] = self.retained.get(table, 0) + n
        if deleted:
            log.info("journal_retention", deleted=deleted, journal=str(self.path), more=more)
        if more:
            self._queue_retention()

    def _lazy_batch(self, jobs: list[Callable[[], None]], meta: object = None) -> None:
        """The lazy lane's jobs in one transaction without an fsync (the next durable commit syncs them)."""
        db = self._connection()
        db.execute("PRAGMA synchronous=OFF")
        try:
            db.execute("BEGIN")
            try:
                for job in jobs:
                    job()
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        finally:
            db.execute("PRAGMA synchronous=FULL")

    def _resume_point(self, epoch: int, gate: GateCounters) -> GateCounters:
        db = self._connection()
        db.execute(f"INSERT OR IGNORE INTO epochs (epoch, {_GATE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                   (epoch, *_gate_values(gate)))  # fmt: skip
        row = db.execute(f"SELECT {_GATE_COLUMNS} FROM epochs WHERE epoch = ?", (epoch,)).fetchone()
        decided_seq, rejects_vision, rejects_failsafe, watchdog_trips, tripped = row
        point = GateCounters(decided_seq, rejects_vision, rejects_failsafe, watchdog_trips, bool(tripped))
        self._points[epoch] = point
        return point

    def _recorded(self, epoch: int, after_seq: int, upto_seq: int) -> list[Recorded]:
        window = "seq > ? AND seq <= ?" if after_seq <= upto_seq else "(seq > ? OR seq <= ?)"
        rows = self._connection().execute(
            "SELECT seq, outcome, written_verdict, t_written IS NOT NULL, trigger_pos FROM parts "
            f"WHERE epoch = ? AND {window}",
            (epoch, after_seq, upto_seq),
        )
        return [Recorded(seq, Outcome(outcome), Outcome(written) if written else None, bool(acked), pos or 0)
                for seq, outcome, written, acked, pos in rows]  # fmt: skip

    def _supersede(self, epoch: int) -> int:
        columns = ", ".join([*_COLUMNS, "t_written"])
        with self._transaction(None) as db:
            db.execute(f"INSERT INTO parts_superseded ({columns}, superseded_utc) "
                       f"SELECT {columns}, ? FROM parts WHERE epoch = ?", (_utc(), epoch))  # fmt: skip
            moved = db.execute("DELETE FROM parts WHERE epoch = ?", (epoch,)).rowcount
            db.execute("DELETE FROM images WHERE epoch = ?", (epoch,))
            db.execute("DELETE FROM epochs WHERE epoch = ?", (epoch,))
        return int(moved)

    def _insert_alarm(self, wall_utc: str, name: str, raised: bool, detail: str) -> None:
        self._connection().execute("INSERT INTO alarms VALUES (?, ?, ?, ?)", (wall_utc, name, int(raised), detail))

    def _insert_audit(self, e: AuditEntry) -> None:
        self._connection().execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                   (e.wall_utc, e.user, e.role, e.peer, e.action, e.argument, e.result, e.detail))

    def _amend(self, epoch: int, seq: int, outcome: str, reason: str) -> None:
        """Inside a transaction of `_record_batch`. A record not in this file (it stayed in a corrupt
        one moved aside) cannot be amended: the journal no longer agrees with the gate past it."""
        done = self._connection().execute("UPDATE parts SET outcome = ?, reason = ? WHERE epoch = ? AND seq = ?",
                                          (outcome, reason, epoch, seq))  # fmt: skip
        if done.rowcount == 0:
            self.lost += 1

    def _insert_review(self, epoch: int, seq: int, why: str, wall_utc: str) -> None:
        if self._db is not None:
            # An operator's flag outranks the line's own reasons (and is never trimmed by their number).
            verb = "INSERT OR REPLACE" if why == "flagged" else "INSERT OR IGNORE"
            self._db.execute(f"{verb} INTO review_queue VALUES (?, ?, ?, ?)", (epoch, seq, why, wall_utc))
            self._db.execute("DELETE FROM review_queue WHERE why != 'flagged' AND rowid <= "
                             "(SELECT max(rowid) FROM review_queue) - ?", (max(1, self.max_images // 4),))  # fmt: skip

    def _insert_gate(self, epoch: int, seq: int, d: GateDecision, wall_utc: str) -> None:
        if self._db is not None:
            self._db.execute("INSERT OR REPLACE INTO gate_decisions VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (epoch, seq, d.gate, d.vision, d.reference, d.flags, wall_utc))  # fmt: skip

    def _update_written(self, epoch: int, seq: int, t: float) -> None:
        if self._db is not None:
            self._db.execute("UPDATE parts SET t_written = ? WHERE epoch = ? AND seq = ?", (t, epoch, seq))


_CORRUPT = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _quick_check(path: Path) -> str:
    """"ok", or what is wrong with the file (raises on a disk error: that says nothing of the file)."""
    try:
        db = sqlite3.connect(path)
        try:
            return str(db.execute("PRAGMA quick_check").fetchone()[0])
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) not in _CORRUPT:
            raise
        return str(exc)


def _move_aside(path: Path) -> Path:
    """Rename the journal (with its WAL) `<name>.corrupt-<UTC time>`: kept for whoever investigates,
    never written again."""
    aside = path.with_name(f"{path.name}.corrupt-{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(f"{aside}{suffix}")
    return aside


def _move_aside_if_corrupt(path: Path) -> tuple[Path | None, str]:
    """`PRAGMA quick_check` on an existing journal; a corrupt one is moved aside. Returns where it
    went and why."""
    if not path.exists():
        return None, ""
    verdict = _quick_check(path)
    if verdict == "ok":
        return None, ""
    return _move_aside(path), verdict.splitlines()[0]


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """A journal from an older version gains the columns added since (NULL in its old rows)."""
    for table, wanted in (("parts", [*_COLUMNS, "t_written"]), ("epochs", ["watchdog_tripped"]),
                          ("parts_superseded", [*_COLUMNS, "t_written", "superseded_utc"])):
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for column in wanted:
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


_GATE_COLUMNS = "decided_seq, rejects_vision, rejects_failsafe, watchdog_trips, watchdog_tripped"


def _gate_values(gate: GateCounters) -> tuple[int, int, int, int, int]:
    return gate.decided_seq, gate.rejects_vision, gate.rejects_failsafe, gate.watchdog_trips, int(gate.watchdog_tripped)


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


class _TwoLaneWriter:
    """The journal's one thread. Urgent jobs run in call order first; consecutive urgent jobs of one
    batch kind run together (group commit: one transaction, one fsync, all or none). Lazy jobs, in
    call order, run only when no urgent job waits, all that are queued as one batch. Not an
    Executor: nothing but the journal submits to it."""

    def __init__(self, name: str) -> None:
        self.batchers: dict[str, Callable[[list[Callable[[], None]], object], None]] = {}
        """Batch kind → runs the batch's jobs in one transaction, given the last job's `meta`."""
        self.idle: Callable[[], None] = _nothing
        """Called when nothing was queued for `idle_in()` seconds (None: never)."""
        self.idle_in: Callable[[], float | None] = lambda: None
        self._idle_in: float | None = None
        self._running_since: float | None = None
        """When the urgent jobs now running were submitted (None: none runs)."""
        self._urgent: deque[_Job] = deque()
        self._lazy: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: object, lazy: bool = False, batch: str | None = None,
               meta: object = None) -> Future[T]:  # fmt: skip
        future: Future[T] = Future()
        with self._wake:
            if self._stopping:
                raise RuntimeError("journal writer is shut down")
            job = _Job(future, lambda: fn(*args), "lazy" if lazy else batch, meta, time.monotonic())  # type: ignore[arg-type]
            (self._lazy if lazy else self._urgent).append(job)
            self._wake.notify()
        return future

    def urgent_since(self) -> float | None:
        """When the oldest urgent job still queued or running was submitted."""
        with self._wake:
            queued = self._urgent[0].submitted if self._urgent else None
        running = self._running_since
        waiting = [t for t in (running, queued) if t is not None]
        return min(waiting) if waiting else None

    def shutdown(self) -> None:
        """Finish every queued job, then end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def _serve(self) -> None:
        while True:
            with self._wake:
                timed_out = False
                while not (self._urgent or self._lazy or self._stopping or timed_out):
                    timed_out = not self._wake.wait(self._idle_in) and self._idle_in is not None
                if self._urgent:
                    jobs = [self._urgent.popleft()]
                    while jobs[0].batch and self._urgent and self._urgent[0].batch == jobs[0].batch:
                        jobs.append(self._urgent.popleft())
                    self._running_since = jobs[0].submitted
                elif self._lazy:
                    jobs = list(self._lazy)
                    self._lazy.clear()
                elif self._stopping:
                    return
                else:
                    jobs = []
            if not jobs:
                try:
                    self.idle()
                except Exception as exc:  # the writer must outlive anything a retry raises
                    log.error("journal_retry_failed", error=str(exc))
                self._idle_in = self.idle_in()
                continue
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if jobs and jobs[0].batch:
                outcomes = self._run_batch(self.batchers.get(jobs[0].batch, _run_each), jobs)
            else:
                outcomes = [_outcome(job.call) for job in jobs]
            # No longer running before anyone hears it finished (a waiter may ask at once).
            self._running_since = None
            for job, (result, error) in zip(jobs, outcomes, strict=True):
                if error is None:
                    job.future.set_result(result)
                else:
                    job.future.set_exception(error)  # handed to the awaiting coroutine
            self._idle_in = self.idle_in()

    @staticmethod
    def _run_batch(
        batcher: Callable[[list[Callable[[], None]], object], None], jobs: list[_Job]
    ) -> list[tuple[object, BaseException | None]]:
        """Each job's (result, exception): all succeed together or all fail with the batch's error."""
        results: dict[int, object] = {}

        def run(i: int, call: Callable[[], object]) -> Callable[[], None]:
            return lambda: results.__setitem__(i, call())

        try:
            batcher([run(i, job.call) for i, job in enumerate(jobs)], jobs[-1].meta)
        except BaseException as exc:
            return [(None, exc)] * len(jobs)
        return [(results.get(i), None) for i in range(len(jobs))]


def _outcome(call: Callable[[], object]) -> tuple[object, BaseException | None]:
    try:
        return call(), None
    except BaseException as exc:
        return None, exc


@dataclass(slots=True)
class _Job:
    future: Future[object]
    call: Callable[[], object]
    batch: str | None
    meta: object
    submitted: float


def _run_each(jobs: list[Callable[[], None]], meta: object = None) -> None:
    for job in jobs:
        job()


def _nothing() -> None:
    pass


def _compress_images(recs: list[PartRecord]) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for rec in recs:
        img = np.ascontiguousarray(rec.image)
        channels = 1 if img.ndim == 2 else img.shape[2]
        rows.append((rec.epoch, rec.seq, img.shape[0], img.shape[1], channels, zlib.compress(img.tobytes(), 1)))
    return rows


class _Checkpointer:
    """Moves the WAL into the database every `period_s` on a connection and thread of its own. A
    PASSIVE checkpoint never blocks the writer: records keep committing to the WAL meanwhile. Every
    `check_every_s` it also runs `PRAGMA quick_check` (a reader: the writer goes on) on a fresh
    connection, so pages cached from before cannot hide damage on the disk, and reports a corrupt
    file to `on_corrupt` once."""

    def __init__(self, path: Path, period_s: float = 1.0, check_every_s: float = 3600.0,
                 on_corrupt: Callable[[str], None] = lambda why: None, retain_every_s: float | None = None,
                 on_retain: Callable[[], None] = lambda: None) -> None:  # fmt: skip
        self._path, self._period_s = path, period_s
        self._check_every_s, self._on_corrupt = check_every_s, on_corrupt
        self._retain_every_s, self._on_retain = retain_every_s, on_retain
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"journal-checkpoint-{path.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        inode = 0
        check_at = time.monotonic() + self._check_every_s
        retain_at = time.monotonic() + (self._retain_every_s or 0.0)
        try:
            while not self._stopping.wait(min(self._period_s, max(0.0, check_at - time.monotonic()))):
                if self._retain_every_s is not None and time.monotonic() >= retain_at:
                    retain_at = time.monotonic() + self._retain_every_s
                    self._on_retain()  # queued in the writer's lazy lane, never done here
                try:
                    if db is not None and os.stat(self._path).st_ino != inode:
                        db.close()  # the file was moved aside: follow the fresh one, never write the old
                        db = None
                    if db is None:
                        inode = os.stat(self._path).st_ino
                        db = sqlite3.connect(self._path, isolation_level=None)
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    if time.monotonic() >= check_at:
                        check_at = time.monotonic() + self._check_every_s
                        verdict = _quick_check(self._path)
                        if verdict != "ok":
                            self._on_corrupt(verdict)
                            db.close()
                            db = None  # the next checkpoint is the fresh journal's
                except (sqlite3.Error, OSError):  # busy or failing disk, or moved: the next one tries again
                    if db is not None:
                        db.close()
                    db = None
        finally:
            if db is not None:
                db.close()
