"""What people (and the simulator) say a part really was: the label store beside a journal.

A small SQLite file, `<journal>.labels.db`, never the journal itself: the journal has one writer,
the controller's verdict path, and a person labelling parts in `lineinspect review` must never hold
its write lock while a PASS waits for its record. The controller writes here too (an operator's
flag from the HMI), off its event loop. A part may be labelled more than once; the latest label
counts, the earlier ones stay (who said what, when).

Labels name classes ("good", "scratch", a new type such as "dent"), not indices: a label outlives
the model that was serving and may name a class no model knows yet.
Not here: what is shown for review (controller/review.py) or how labels become a dataset
(models/from_journal.py).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (epoch INTEGER, seq INTEGER, true_class TEXT, source TEXT, labeled_by TEXT,
                                   wall_utc TEXT, note TEXT);
CREATE INDEX IF NOT EXISTS labels_part ON labels (epoch, seq);
"""
SOURCES = ("operator", "review", "simulator")
"""An operator's flag at the line (HMI or CLI), a reviewer's label in `lineinspect review`, the simulator's truth."""
CLASS_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
"""Class names are folder names in a dataset: lowercase, short, no spaces."""


@dataclass(frozen=True, slots=True)
class Label:
    epoch: int
    seq: int
    true_class: str
    source: str
    labeled_by: str
    wall_utc: str
    note: str = ""

    @property
    def result_id(self) -> str:
        return f"{self.epoch}/{self.seq}"


def labels_path(journal: Path) -> Path:
    return journal.with_name(journal.name + ".labels.db")


def parse_result_id(result_id: str) -> tuple[int, int]:
    """'epoch/seq' (as the HMI's ResultId) → (epoch, seq); ValueError naming the problem."""
    epoch, sep, seq = result_id.strip().partition("/")
    if not sep or not epoch.isdigit() or not seq.isdigit():
        raise ValueError(f"a result id is 'epoch/seq' (e.g. 123456/42), not {result_id!r}")
    return int(epoch), int(seq)


def parse_flag(argument: str) -> tuple[int, int, str, str]:
    """An operator's flag, "epoch/seq true_class[ note]" (or its three fields tab-separated) →
    (epoch, seq, class, note); ValueError naming what is wrong."""
    if "\t" in argument:  # the HMI's fields, as they were given
        result_id, true_class, note = [*argument.split("\t", 2), "", ""][:3]
    else:
        result_id, _, rest = argument.strip().partition(" ")
        true_class, _, note = rest.strip().partition(" ")
    epoch, seq = parse_result_id(result_id)
    return epoch, seq, check_class(true_class.strip()), note.strip()


def check_class(name: str) -> str:
    if not CLASS_NAME.fullmatch(name):
        raise ValueError(f"a class name is lowercase letters, digits, '_' or '-' (≤ 32, a letter first), not {name!r}")
    return name


def _connect(journal: Path) -> sqlite3.Connection:
    db = sqlite3.connect(labels_path(journal), timeout=10.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    return db


def add_labels(journal: Path, labels: list[tuple[int, int, str]], *, source: str, labeled_by: str,
               note: str = "") -> int:  # fmt: skip
    """Store (epoch, seq, class) labels in one transaction; returns how many. ValueError for a bad
    class name or source, before anything is stored."""
    if source not in SOURCES:
        raise ValueError(f"label source must be one of {SOURCES}, not {source!r}")
    for _, _, name in labels:
        check_class(name)
    wall = datetime.now(UTC).isoformat(timespec="milliseconds")
    db = _connect(journal)
    try:
        with db:
            db.executemany("INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(e, s, c, source, labeled_by, wall, note) for e, s, c in labels])  # fmt: skip
    finally:
        db.close()
    return len(labels)


def latest_labels(journal: Path, sources: tuple[str, ...] = SOURCES) -> dict[tuple[int, int], Label]:
    """Each labelled part's latest label among `sources` (none where there is no label store)."""
    path = labels_path(journal)
    if not path.is_file():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
    try:
        marks = ", ".join("?" * len(sources))
        rows = db.execute(f"SELECT epoch, seq, true_class, source, labeled_by, wall_utc, note FROM labels "
                          f"WHERE source IN ({marks}) ORDER BY rowid", sources).fetchall()  # fmt: skip
    finally:
        db.close()
    return {(r[0], r[1]): Label(*r) for r in rows}
