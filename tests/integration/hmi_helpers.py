"""Secure HMI fixtures shared by the HMI tests: an HMI (process or in-process server) with the
simulator's demo access (a user of every role, a trusted client certificate), and clients for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from asyncua import Client

from hmi.process import HmiProcess
from hmi.server import HmiServer
from hmi.settings import HmiSettings
from sim.hmi_demo import DemoAccess, provision_demo, secure_client

ANY_PORT = "opc.tcp://127.0.0.1:0/lineinspect/"
NAMESPACE = "urn:lineinspect"


def settings_in(tmp: Path, **extra: Any) -> HmiSettings:
    return HmiSettings(endpoint=ANY_PORT, pki_dir=tmp / "pki", users_file=tmp / "users.json", **extra)


@contextlib.asynccontextmanager
async def secure_hmi_process(tmp: Path, **process_kw: Any) -> AsyncIterator[tuple[HmiProcess, DemoAccess]]:
    settings = settings_in(tmp, **process_kw.pop("settings", {}))
    access, _ = await provision_demo(settings, tmp)
    async with HmiProcess(ANY_PORT, settings_json=settings.model_dump_json(), **process_kw) as process:
        endpoint = await asyncio.wait_for(process.wait_listening(), 30)
        yield process, access.with_endpoint(endpoint)


@contextlib.asynccontextmanager
async def secure_hmi_server(
    tmp: Path, controller: Any = None, **settings: Any
) -> AsyncIterator[tuple[HmiServer, DemoAccess]]:
    s = settings_in(tmp, **settings)
    access, _ = await provision_demo(s, tmp)
    async with HmiServer(s, controller) as server:
        yield server, access.with_endpoint(server.endpoint)


@contextlib.asynccontextmanager
async def connected(access: DemoAccess, role: str = "viewer", **kw: Any) -> AsyncIterator[Client]:
    client = await secure_client(access, role, **kw)
    async with client:
        yield client
