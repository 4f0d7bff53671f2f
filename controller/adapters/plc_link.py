"""`Snap7PlcLink`: the PLC link over S7 with python-snap7's AsyncClient.

One connection per PLC, requests serialized by the client. After any timeout, error or
cancellation the connection is considered poisoned (a late reply could be read as the answer to
the next request), so it is dropped and only `reconnect()` makes the link usable again.
On connect the data blocks are checked against the contract (size, interface version).
Not here: what is read or written when (controller/app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable
from types import TracebackType
from typing import TypeVar

import snap7
from snap7.error import S7Error, S7ProtocolError

from controller.core.plc_codec import PLC_TO_VISION_SIZE, VISION_TO_PLC_SIZE, check_plc_contract
from controller.errors import PlcContractError, PlcError, PlcStalledError

T = TypeVar("T")

logging.getLogger("snap7").setLevel(logging.WARNING)  # the client logs every connect at INFO


class Snap7PlcLink:
    def __init__(
        self, host: str, port: int = 102, *, rack: int = 0, slot: int = 1, db_in: int = 100,
        db_out: int = 101, timeout_s: float = 0.1, connect_timeout_s: float = 3.0,
    ) -> None:  # fmt: skip
        self.host, self.port, self.rack, self.slot = host, port, rack, slot
        self.db_in, self.db_out = db_in, db_out
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self._client: snap7.AsyncClient | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.reconnects = 0

    @property
    def name(self) -> str:
        return f"PLC {self.host}:{self.port}"

    async def __aenter__(self) -> Snap7PlcLink:
        await self._connect()
        try:
            await self.verify_contract()
        except BaseException:
            await self._drop()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._drop()

    async def verify_contract(self) -> None:
        """The DBs exist with exactly the contract's sizes and the PLC speaks this interface version."""
        for db, size, name in ((self.db_in, PLC_TO_VISION_SIZE, "PlcToVision"),
                               (self.db_out, VISION_TO_PLC_SIZE, "VisionToPlc")):  # fmt: skip
            try:
                # A whole DB may take several PDUs: allow the connect timeout, not a poll's.
                data = await self._call(self._require().db_read(db, 0, size), self.connect_timeout_s)
            except PlcError as exc:
                raise PlcContractError(
                    f"{self.name}: DB {db} ({name}) cannot be read as {size} bytes "
                    f"(missing, smaller, optimized access, or PUT/GET not permitted"
                    + ("; version 1's DB was 172 bytes: load this release's PLC program, docs/plc-interface.md)"
                       if name == "PlcToVision" else ")")
                ) from exc
            if await self._readable(db, size):
                raise PlcContractError(f"{self.name}: DB {db} ({name}) is larger than {size} bytes")
            if name == "PlcToVision":
                try:
                    check_plc_contract(bytes(data))
                except ValueError as exc:
                    raise PlcContractError(f"{self.name}: {exc}") from exc

    async def _readable(self, db: int, offset: int) -> bool:
        """Whether the PLC serves byte `offset` of DB `db`. A PLC refuses a read past a DB's end
        with an error code in a complete answer, so that refusal leaves the connection clean and
        in use; any other failure drops it (by our own rule) and we connect again."""
        try:
            answer = await self._call(_refusal_as_none(self._require().db_read(db, offset, 1)),
                                      self.connect_timeout_s)  # fmt: skip
        except PlcError:
            await self._connect()
            return False
        return answer is not None

    async def read_plc_to_vision(self) -> bytes:
        data = await self._call(self._require().db_read(self.db_in, 0, PLC_TO_VISION_SIZE))
        if len(data) != PLC_TO_VISION_SIZE:
            await self._drop()
            raise PlcError(f"{self.name}: short read of DB {self.db_in}: {len(data)} bytes")
        return bytes(data)

    async def write_vision_to_plc(self, offset: int, data: bytes) -> None:
        await self._call(self._require().db_write(self.db_out, offset, bytearray(data)))

    @property
    def max_write_bytes(self) -> int:
        # An S7 write request spends 35 bytes of its PDU on headers (python-snap7's own budget).
        pdu = self._client.pdu_length if self._client is not None else 240  # 240: the smallest S7 PDU
        return int(pdu) - 35

    async def reconnect(self) -> None:
        await self._drop()
        await self._connect()
        self.reconnects += 1

    def _require(self) -> snap7.AsyncClient:
        if self._client is None:
            raise PlcError(f"{self.name}: not connected")
        return self._client

    async def _call(self, request: Awaitable[T], timeout_s: float | None = None) -> T:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # arrives as the request completes, and a supervised loop must always stop when told to.
        timeout_s = timeout_s or self.timeout_s
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                return await request
        except asyncio.CancelledError:
            self._poison()
            raise
        except TimeoutError as exc:
            await self._drop()
            overdue_s = time.monotonic() - started - timeout_s
            if overdue_s > timeout_s:
                # The timer fired long after it was due: the event loop was not running (SIGSTOP, a
                # starved VM). The answer may well have arrived meanwhile; after a stall asyncio runs
                # the expired timer before the task the answer woke.
                raise PlcStalledError(f"{self.name}: request overdue by {overdue_s * 1000:.0f} ms after this "
                                      f"process stalled") from exc  # fmt: skip
            raise PlcError(f"{self.name}: request timed out after {timeout_s * 1000:.0f} ms") from exc
        except (S7Error, OSError, RuntimeError) as exc:
            await self._drop()
            raise PlcError(f"{self.name}: {exc}") from exc

    def _poison(self) -> None:
        """Cancelled mid-request: the socket may hold a stale reply. Forget it now (no await is
        allowed while being cancelled) and close it in the background; `_drop` reaps the closer."""
        client, self._client = self._client, None
        if client is not None:
            self._closing.add(asyncio.get_running_loop().create_task(_quiet_disconnect(client)))

    async def _connect(self) -> None:
        client = snap7.AsyncClient()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await client.connect(self.host, self.rack, self.slot, self.port)
        except (S7Error, OSError, TimeoutError) as exc:
            await _quiet_disconnect(client)
            raise PlcError(f"{self.name} unreachable: {exc or type(exc).__name__}") from exc
        self._client = client

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _quiet_disconnect(client)
        closing, self._closing = self._closing, set()
        await asyncio.gather(*closing, return_exceptions=True)


_REFUSED = re.compile(r"Read operation failed: .* \(0x[0-9a-f]{2}\)$")
"""python-snap7's error for a read answered with an item return code other than success (0x05
address out of range, 0x0a object does not exist): the answer arrived whole, under the request's
own sequence number, so no late reply is left on the socket."""


async def _refusal_as_none(request: Awaitable[T]) -> T | None:
    try:
        return await request
    except S7ProtocolError as exc:
        if _REFUSED.match(str(exc)):
            return None
        raise


async def _quiet_disconnect(client: snap7.AsyncClient) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await client.disconnect()
