"""Reading Wyoming events from an untrusted client, with limits.

wyoming's own ``async_read_event`` trusts the header: a ``data_length`` of a gigabyte is read into memory, one
larger than the bytes that follow waits forever, and broken JSON or UTF-8 ends the connection silently. Here
every such case becomes a :class:`ProtocolError` with a text for the client's ``error`` event.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Optional

from wyoming.event import Event


class ProtocolError(Exception):
    """The client sent something that is not a valid Wyoming event; the connection is closed after an error."""


@dataclass(frozen=True)
class Limits:
    max_data_bytes: int = 1 << 20      # JSON data of one event (20 000 CJK characters are ~60 KB)
    max_payload_bytes: int = 1 << 20   # a TTS server expects no payloads; audio-sized ones are read and dropped
    body_timeout_s: float = 10.0       # the announced data/payload must arrive within this time


async def read_event(reader: asyncio.StreamReader, limits: Limits) -> Optional[Event]:
    """The next event, or None at end of stream. Raises ProtocolError for anything malformed."""
    try:
        line = await reader.readline()
    except (ValueError, asyncio.LimitOverrunError) as e:  # header line longer than the reader's limit
        raise ProtocolError("event header line is too long") from e
    if not line:
        return None
    if not line.endswith(b"\n"):
        return None  # the client closed in the middle of a header: nothing to answer
    try:
        header = json.loads(line)
    except ValueError as e:  # also UnicodeDecodeError
        raise ProtocolError(f"event header is not valid JSON: {e}") from e
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError("event header has no 'type'")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise ProtocolError("event 'data' is not an object")

    data_length = _length(header, "data_length", limits.max_data_bytes)
    payload_length = _length(header, "payload_length", limits.max_payload_bytes)
    try:
        if data_length:
            body = await asyncio.wait_for(reader.readexactly(data_length), limits.body_timeout_s)
            try:
                extra = json.loads(body)
            except ValueError as e:
                raise ProtocolError(f"event data is not valid JSON: {e}") from e
            if not isinstance(extra, dict):
                raise ProtocolError("event data is not an object")
            data.update(extra)
        payload = None
        if payload_length:
            payload = await asyncio.wait_for(reader.readexactly(payload_length), limits.body_timeout_s)
    except asyncio.TimeoutError as e:
        raise ProtocolError("the event's announced data did not arrive") from e
    except asyncio.IncompleteReadError:
        return None  # closed mid-event
    return Event(type=header["type"], data=data, payload=payload)


def _length(header: dict, key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"'{key}' must be a non-negative integer")
    if value > limit:
        raise ProtocolError(f"'{key}' {value} is larger than the limit of {limit} bytes")
    return value
