"""Reading Wyoming events from an untrusted client, with limits.

wyoming's own ``async_read_event`` trusts the header: a ``data_length`` of a gigabyte is read into memory, one
larger than the bytes that follow waits forever, broken JSON or UTF-8 ends the connection silently, deeply nested
JSON raises RecursionError, and a connection that sends nothing (or half a header) is held forever. Here every
such case becomes a :class:`ProtocolError` with a text for the client's ``error`` event, or an :class:`IdleTimeout`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Optional

from wyoming.event import Event


class ProtocolError(Exception):
    """The client sent something that is not a valid Wyoming event; the connection is closed after an error."""


class IdleTimeout(Exception):
    """The client sent no event for ``idle_timeout_s``: the connection is closed without a word."""


@dataclass(frozen=True)
class Limits:
    max_data_bytes: int = 1 << 20      # JSON data of one event (20 000 CJK characters are ~60 KB)
    max_payload_bytes: int = 1 << 20   # a TTS server expects no payloads; audio-sized ones are read and dropped
    body_timeout_s: float = 10.0       # the announced data/payload must arrive within this time
    idle_timeout_s: float = 120.0      # a connection that starts no event for this long is closed
    header_timeout_s: float = 30.0     # a header line, once begun, must be complete within this time (slowloris)


async def read_event(reader: asyncio.StreamReader, limits: Limits) -> Optional[Event]:
    """The next event, or None at end of stream. Raises ProtocolError for anything malformed or too slow, and
    IdleTimeout when no event begins within ``limits.idle_timeout_s``."""
    try:
        first = await asyncio.wait_for(reader.readexactly(1), limits.idle_timeout_s)
    except asyncio.TimeoutError:
        raise IdleTimeout(f"idle for {limits.idle_timeout_s:g} s") from None
    except asyncio.IncompleteReadError:
        return None  # end of stream between events
    try:
        rest = b"" if first == b"\n" else await asyncio.wait_for(reader.readline(), limits.header_timeout_s)
    except (ValueError, asyncio.LimitOverrunError) as e:  # header line longer than the reader's limit
        raise ProtocolError("event header line is too long") from e
    except asyncio.TimeoutError:
        raise ProtocolError(f"event header incomplete after {limits.header_timeout_s:g} s") from None
    line = first + rest
    if not line.endswith(b"\n"):
        return None  # the client closed in the middle of a header: nothing to answer
    header = _json(line, "event header")
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
            extra = _json(body, "event data")
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


def _json(text: bytes, what: str) -> object:
    try:
        return json.loads(text)
    except ValueError as e:  # also UnicodeDecodeError
        raise ProtocolError(f"{what} is not valid JSON: {e}") from None
    except RecursionError:  # [[[[... 20 000 levels deep fit in 40 kB
        raise ProtocolError(f"{what} is nested too deeply") from None


def _length(header: dict, key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"'{key}' must be a non-negative integer")
    if value > limit:
        raise ProtocolError(f"'{key}' {value} is larger than the limit of {limit} bytes")
    return value
