"""Snap7PlcLink against a real S7 server (python-snap7's Server running the simulated PLC).

With `--hil` style hardware absent, the wire-level emulator is the strongest peer we can run here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import snap7
from snap7.server import EVC_CLIENT_ADDED
from snap7.type import SrvArea

from controller.adapters.plc_link import Snap7PlcLink
from controller.core import plc_codec as c
from controller.errors import PlcContractError, PlcError, PlcStalledError
from sim.plant import Plant, PlantConfig
from sim.plc_server import SimPlc, _free_port


@pytest.fixture
def plc() -> Iterator[SimPlc]:
    with SimPlc(Plant(PlantConfig(parts=3))) as sim:
        yield sim


async def test_reads_the_whole_block_and_writes_verdicts(plc: SimPlc) -> None:
    async with Snap7PlcLink("127.0.0.1", plc.port) as link:
        first = c.decode_plc_to_vision(await link.read_plc_to_vision())
        assert first.version == c.INTERFACE_VERSION and first.epoch == plc.program.epoch
        await asyncio.sleep(0.01)
        assert c.decode_plc_to_vision(await link.read_plc_to_vision()).life != first.life  # the scan runs
        entry = c.VerdictEntry(5, c.PASS, 0, 42)
        await link.write_vision_to_plc(c.verdict_offset(5), c.encode_verdict(entry))
        assert c.decode_verdict(bytes(plc.vision_db), c.verdict_offset(5)) == entry
        # The negotiated PDU decides how much one write request carries (480-byte PDU: 445 bytes).
        assert link.max_write_bytes == 445


async def test_unreachable_plc_is_one_clear_error() -> None:
    port = _free_port("127.0.0.1")
    with pytest.raises(PlcError, match=f"PLC 127.0.0.1:{port} unreachable"):
        async with Snap7PlcLink("127.0.0.1", port, connect_timeout_s=1.0):
            pass


def _server_with(plc_db: bytearray, vision_db: bytearray) -> tuple[snap7.server.Server, int]:
    server = snap7.server.Server(log=False)
    server.register_area(SrvArea.DB, 100, plc_db)
    server.register_area(SrvArea.DB, 101, vision_db)
    port = _free_port("127.0.0.1")
    server.start_to("127.0.0.1", port)
    return server, port


@pytest.mark.parametrize(
    ("plc_size", "vision_size", "version", "message"),
    [
        (172, 520, 1, r"DB 100 \(PlcToVision\) cannot be read as 304 bytes .*version 1's DB was 172 bytes"),
        (300, 520, 2, r"DB 100 \(PlcToVision\) cannot be read as 304 bytes"),
        (320, 520, 2, r"DB 100 \(PlcToVision\) is larger than 304 bytes"),
        (304, 512, 2, r"DB 101 \(VisionToPlc\) cannot be read as 520 bytes"),
        (304, 520, 1, r"PLC interface version is 1, this controller speaks 2 \(load the PLC program"),
        (304, 520, 3, r"PLC interface version is 3, this controller speaks 2$"),
    ],
)
async def test_contract_mismatch_is_refused_at_connect(plc_size: int, vision_size: int, version: int,
                                                       message: str) -> None:  # fmt: skip
    plc_db = bytearray(plc_size)
    plc_db[3] = version
    server, port = _server_with(plc_db, bytearray(vision_size))
    try:
        with pytest.raises(PlcContractError, match=message):
            async with Snap7PlcLink("127.0.0.1", port):
                pass
    finally:
        server.stop()


async def test_timeout_poisons_the_connection_until_reconnect(plc: SimPlc) -> None:
    """After a timeout the old socket may still deliver the late reply: never read from it again."""
    async with Snap7PlcLink("127.0.0.1", plc.port, timeout_s=0.5) as link:
        plc.program.start()  # hold nothing; now stall the server by locking a DB it must read
        plc._server.lock_area(SrvArea.DB, 100)
        try:
            link.timeout_s = 0.05
            with pytest.raises(PlcError, match="timed out"):
                await link.read_plc_to_vision()
        finally:
            plc._server.unlock_area(SrvArea.DB, 100)
        with pytest.raises(PlcError, match="not connected"):
            await link.read_plc_to_vision()
        link.timeout_s = 0.5
        await link.reconnect()
        data = c.decode_plc_to_vision(await link.read_plc_to_vision())
        assert data.version == c.INTERFACE_VERSION and data.epoch == plc.program.epoch


async def test_cancellation_mid_request_drops_the_connection(plc: SimPlc) -> None:
    async with Snap7PlcLink("127.0.0.1", plc.port) as link:
        plc._server.lock_area(SrvArea.DB, 100)
        try:
            task = asyncio.create_task(link.read_plc_to_vision())
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            plc._server.unlock_area(SrvArea.DB, 100)
        with pytest.raises(PlcError, match="not connected"):
            await link.read_plc_to_vision()
        await link.reconnect()
        assert len(await link.read_plc_to_vision()) == c.PLC_TO_VISION_SIZE


async def test_a_timeout_that_expired_while_this_process_stood_still_is_not_a_link_fault(plc: SimPlc) -> None:
    """SIGSTOP, or a starved VM: the request's timer fires long after it was due. The connection is
    reset all the same, but the error says the process stalled, so no link alarm is raised."""
    async with Snap7PlcLink("127.0.0.1", plc.port, timeout_s=0.05) as link:
        plc._server.lock_area(SrvArea.DB, 100)
        try:
            task = asyncio.create_task(link.read_plc_to_vision())
            await asyncio.sleep(0.01)  # the request is on the wire
            time.sleep(0.3)  # noqa: ASYNC251  # deliberately: the event loop stands still, as under SIGSTOP
            with pytest.raises(PlcStalledError, match="overdue"):
                await task
        finally:
            plc._server.unlock_area(SrvArea.DB, 100)
        with pytest.raises(PlcError, match="not connected"):
            await link.read_plc_to_vision()


async def test_checking_the_contract_takes_one_connection() -> None:
    """The size probe reads one byte past each DB's end; the PLC's refusal is a complete answer, so
    the probe must not cost a reconnect (it cost two at every start)."""
    plc_db = bytearray(c.PLC_TO_VISION_SIZE)
    plc_db[3] = c.INTERFACE_VERSION
    server, port = _server_with(plc_db, bytearray(c.VISION_TO_PLC_SIZE))
    connects: list[int] = []
    server.set_events_callback(lambda e: connects.append(1) if e.EvtCode == EVC_CLIENT_ADDED else None)
    try:
        async with Snap7PlcLink("127.0.0.1", port) as link:
            assert len(await link.read_plc_to_vision()) == c.PLC_TO_VISION_SIZE  # the same connection serves
        assert len(connects) == 1
    finally:
        server.stop()
