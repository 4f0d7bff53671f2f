"""The wire format between the controller and its HMI process: typed, size-limited frames.

A frame is a 4-byte big-endian length followed by that many bytes of JSON, one typed message
(`type` discriminates). Both directions use it, and both decode with the same two guards: a frame
longer than `MAX_FRAME_BYTES` is refused before it is read (the length is all that was trusted),
and the JSON must validate strictly against the message model (no extra keys, no coercion).
Never pickle: the HMI process faces the panel network, so whatever it sends is untrusted input,
and unpickling untrusted bytes runs code.

Controller → HMI: `StatusMessage` (a complete `LineStatus` snapshot, latest wins), `ResultsMessage`
(parts' outcomes, in order), `ReplyMessage` (the answer to one operator command).
HMI → controller: `ListeningMessage` (its real endpoint, once it listens), `CommandMessage` (an
operator's command with who sent it, already allowed for that role by the HMI), `AuditMessage`
(what the HMI handled itself, a call refused for the caller's role say: the controller audits it).

Not here: the pipes themselves, overflow policy or restarts (hmi/process.py), OPC UA (hmi/server.py).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from controller.operator import Action
from controller.status import LineStatus, PartResult

MAX_FRAME_BYTES = 64 * 1024
"""A status snapshot is ~0.5 KiB; alarms texts would need hundreds of entries to come near this."""

_HEADER = struct.Struct(">I")
_T = TypeVar("_T")


class ChannelError(Exception):
    """A frame that is too long, truncated, or not one valid message: the channel is not to be trusted."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class StatusMessage(_Message):
    """Controller → HMI: the newest status (latest value wins; each one is complete)."""

    type: Literal["status"] = "status"
    published_at: float
    """When the controller published it, as Unix time (seconds): the panel's `UpdatedAt`."""
    status: LineStatus


class ListeningMessage(_Message):
    """HMI → controller: the OPC UA server listens, on this endpoint (with the real port)."""

    type: Literal["listening"] = "listening"
    endpoint: Annotated[str, Field(max_length=512)]
    metrics_url: Annotated[str, Field(max_length=512)] = ""


MAX_RESULTS_PER_FRAME = 100
"""A result is ~300 bytes of JSON: 100 stay well inside a frame."""

_Text = Annotated[str, Field(max_length=128)]
_Role = Literal["viewer", "operator", "engineer", "admin"]


class ResultsMessage(_Message):
    """Controller → HMI: parts' outcomes, oldest first (a part's result again if it was corrected)."""

    type: Literal["results"] = "results"
    results: Annotated[list[PartResult], Field(max_length=MAX_RESULTS_PER_FRAME)]


class ReplyMessage(_Message):
    """Controller → HMI: what came of command `id`."""

    type: Literal["reply"] = "reply"
    id: Annotated[int, Field(ge=0)]
    ok: bool
    detail: Annotated[str, Field(max_length=512)]


class CommandMessage(_Message):
    """HMI → controller: an operator's command. The HMI checked the role; the controller checks the
    state, applies it and audits it."""

    type: Literal["command"] = "command"
    id: Annotated[int, Field(ge=0)]
    action: Action
    argument: _Text = ""
    user: _Text
    role: _Role
    peer: _Text


class AuditMessage(_Message):
    """HMI → controller: an action the HMI handled itself (a call refused for the caller's role, a
    user added by an admin), for the controller's audit trail. Nothing is applied."""

    type: Literal["audit"] = "audit"
    action: _Text
    argument: _Text = ""
    result: Literal["done", "refused"]
    detail: _Text
    user: _Text
    role: _Role
    peer: _Text


ToHmi = Annotated[StatusMessage | ResultsMessage | ReplyMessage, Field(discriminator="type")]
"""Everything the controller may send the HMI."""
FromHmi = Annotated[ListeningMessage | CommandMessage | AuditMessage, Field(discriminator="type")]
"""Everything the HMI may send the controller."""

_TO_HMI: TypeAdapter[ToHmi] = TypeAdapter(ToHmi)
_FROM_HMI: TypeAdapter[FromHmi] = TypeAdapter(FromHmi)


def encode(message: _Message) -> bytes:
    """One frame. Raises ChannelError if the message is too long to send (the receiver would refuse it)."""
    body = message.model_dump_json().encode()
    if len(body) > MAX_FRAME_BYTES:
        raise ChannelError(f"{message.__class__.__name__} of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    return _HEADER.pack(len(body)) + body


def encode_status(status: LineStatus, published_at: float) -> bytes:
    # model_construct: the status is our own, already typed; validation is the receiver's job.
    return encode(StatusMessage.model_construct(type="status", published_at=published_at, status=status))


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's body; None at a clean end of stream (between frames)."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ChannelError("stream ended inside a frame header") from exc
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME_BYTES:
        raise ChannelError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise ChannelError(f"stream ended inside a frame ({len(exc.partial)} of {size} bytes)") from exc


def decode_to_hmi(body: bytes) -> ToHmi:
    return _decode(_TO_HMI, body)


def decode_from_hmi(body: bytes) -> FromHmi:
    return _decode(_FROM_HMI, body)


def _decode(adapter: TypeAdapter[_T], body: bytes) -> _T:
    try:
        return adapter.validate_json(body, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise ChannelError(f"invalid message: {where}: {first['msg']}") from exc
