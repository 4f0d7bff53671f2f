"""Our image of the `VisionToPlc` data block, and the one write per exchange cycle that brings the
PLC's copy up to it: the header (heartbeat `life`, `ready`, `epoch_ack`) and every verdict entry
queued since the last write, as one contiguous block write starting at offset 0.

Why one block: on a slow S7 link every request costs a round trip, and the connection carries one
request at a time, so a cycle can afford one read and one write. python-snap7 3.3's
`write_multi_vars` sends one request per item, so it would not save a round trip; a contiguous
write does. It fits one request unless an entry beyond the PDU (seq mod 64 ≥ 54) changed; then it
takes two, each with its own timeout. The block rewrites entries between the header and the newest entry with the bytes
they already hold, which is harmless: an entry only acts when its `seq` matches the part's.

Pure: no I/O, no clock. Not here: when to write (controller/app.py), the layout (plc_codec.py).
"""

from __future__ import annotations

from controller.core import plc_codec as c
from controller.core.tracking import wrap_diff

_EMPTY_ENTRY = bytes(c.VERDICT_ENTRY_SIZE)


class VisionBlock:
    def __init__(self) -> None:
        self._data = bytearray(c.VISION_TO_PLC_SIZE)
        self._dirty_end = 0
        """End offset of the highest entry changed since the last write (0: only the header)."""

    def set_header(self, header: c.VisionHeader) -> None:
        self._data[: c.VERDICT_RING_OFFSET] = c.encode_vision_header(header)

    def put(self, entry: c.VerdictEntry) -> None:
        """Queue a verdict entry for the next write."""
        self._set_slot(entry.seq, c.encode_verdict(entry))

    def retract(self, seq: int) -> None:
        """Zero `seq`'s entry if it still holds it (a write of it failed and it is no longer on
        time): if the failed write did land, the next write takes it back before the gate."""
        off = c.verdict_offset(seq)
        if c.decode_verdict(bytes(self._data[off : off + c.VERDICT_ENTRY_SIZE])).seq == seq:
            self._set_slot(seq, _EMPTY_ENTRY)

    def clear_ring(self) -> None:
        """A new PLC epoch: the PLC's ring has been zeroed (by the caller's own write); so is ours."""
        self._data[c.VERDICT_RING_OFFSET :] = bytes(c.VISION_TO_PLC_SIZE - c.VERDICT_RING_OFFSET)
        self._dirty_end = 0

    def clear_decided(self, decided_seq: int) -> None:
        """Zero the entries of parts the PLC has decided, where this write covers them anyway: an old
        PASS byte then never lies next to a sequence number a half-applied write could complete."""
        end = max(c.VERDICT_RING_OFFSET, self._dirty_end)
        for off in range(c.VERDICT_RING_OFFSET, end, c.VERDICT_ENTRY_SIZE):
            seq = c.decode_verdict(bytes(self._data[off : off + c.VERDICT_ENTRY_SIZE])).seq
            if seq != 0 and wrap_diff(seq, decided_seq) <= 0:
                self._data[off : off + c.VERDICT_ENTRY_SIZE] = _EMPTY_ENTRY

    def rewrite_all(self) -> None:
        """After a reconnect: the next write brings the whole ring back to this image."""
        self._dirty_end = c.VISION_TO_PLC_SIZE

    def _set_slot(self, seq: int, data: bytes) -> None:
        off = c.verdict_offset(seq)
        self._data[off : off + c.VERDICT_ENTRY_SIZE] = data
        self._dirty_end = max(self._dirty_end, off + c.VERDICT_ENTRY_SIZE)

    @staticmethod
    def first_request_end(max_request_bytes: int) -> int:
        """Where the first request ends: after the last whole entry that fits with the header."""
        entries_fit = (max_request_bytes - c.VERDICT_RING_OFFSET) // c.VERDICT_ENTRY_SIZE
        return c.VERDICT_RING_OFFSET + min(c.VERDICT_RING, entries_fit) * c.VERDICT_ENTRY_SIZE

    def next_writes(self, max_request_bytes: int) -> list[tuple[int, bytes]]:
        """(offset, bytes) of the writes that bring the PLC up to this image: the header and every
        entry up to the highest one changed. One request where it fits (at the usual 480-byte PDU,
        445 bytes: the header and entries 0..53); otherwise the entries beyond go in a second
        request, split at an entry boundary so that no entry is ever half-written."""
        end = max(c.VERDICT_RING_OFFSET, self._dirty_end)
        cut = self.first_request_end(max_request_bytes)
        if end <= cut:
            return [(0, bytes(self._data[:end]))]
        return [(0, bytes(self._data[:cut])), (cut, bytes(self._data[cut:end]))]

    def written(self) -> None:
        """The writes from `next_writes` were acknowledged."""
        self._dirty_end = 0
