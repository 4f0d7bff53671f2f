"""Hidden part identity: the simulator stamps each part's id into pixels outside the model's ROI,
so the judge can tell exactly which part's image the controller judged. The controller never
reads it; the model never sees it (the ROI crop removes it)."""

from __future__ import annotations

import struct

import numpy as np

_MAGIC = b"LI"
_FMT = struct.Struct(">2sI")
STAMP_ROWS = 2  # rows 0..1; the ROI starts lower (models.synthetic.ROI)


def stamp(frame: np.ndarray, part_id: int) -> None:
    payload = np.frombuffer(_FMT.pack(_MAGIC, part_id), dtype=np.uint8)
    frame[:STAMP_ROWS, : payload.size] = payload


def read_stamp(frame: np.ndarray) -> int | None:
    """The stamped part id, or None if the frame carries no (or a damaged) stamp."""
    rows = frame[:STAMP_ROWS, : _FMT.size]
    if not (rows[0] == rows[1]).all():
        return None
    magic, part_id = _FMT.unpack(rows[0].tobytes())
    return part_id if magic == _MAGIC else None
