"""What the MQTT bridge handles for one announcement: the payload parser, the Wyoming audio sink it streams to
(a client under limits), and the WAV files of the announce directory (unique names, retention)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import secrets
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from wyoming.event import Event, async_write_event

from .audio_events import CHANNELS, SAMPLE_WIDTH
from .protocol import Limits, ProtocolError, read_event

_LOGGER = logging.getLogger(__name__)

_PLAYED = "played"  # wyoming.snd.Played: what a sound service answers once the audio has been played
# What a sink may send back: small events only ("played" has no data at all), each within a few seconds.
SINK_LIMITS = Limits(max_data_bytes=64 * 1024, max_payload_bytes=64 * 1024, body_timeout_s=5.0)
SINK_LINE_LIMIT = 64 * 1024  # longest event header line read from a sink


def tcp_address(uri: str) -> tuple[str, int]:
    parsed = urlparse(uri)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme != "tcp" or not parsed.hostname or port is None:
        raise ValueError(f"not a tcp://host:port URI: {uri!r}")
    return parsed.hostname, port


def new_id() -> str:
    """An id for an announcement whose payload has none."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


# -------------------------------------------------------------------------------------------- announcements
class AnnouncementError(ValueError):
    """A payload that is not a valid announcement; ``id`` is the request's id where it could be read."""

    def __init__(self, message: str, id: str | None = None) -> None:
        super().__init__(message)
        self.id = id


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT_TARGET: Any = _Default()  # Announcement.target when the payload names none: the --announce-default


@dataclass(frozen=True)
class Announcement:
    text: str
    voice: str | None = None
    language: str | None = None
    target: str | None = DEFAULT_TARGET  # a target name, a tcp:// URI, None (no sink: file only) or DEFAULT_TARGET
    id: str | None = None
    # when the publisher sent it (Unix seconds), if it says: MQTT 3.1.1 carries no publish time, and the age
    # limit should count from publishing for announcements the broker held while the server was down
    time: float | None = None

    @classmethod
    def parse(cls, payload: bytes | str, max_chars: int) -> Announcement:
        """Plain UTF-8 text, or a JSON object with "text" and optional "voice", "language", "target" (a name, a
        tcp:// URI, or null for no sink), "id" (a string or number) and "time" (when it was published, Unix
        seconds). Raises AnnouncementError, and nothing else, whatever the payload."""
        try:
            return cls._parse(payload, max_chars)
        except AnnouncementError:
            raise
        except RecursionError:  # json's decoder on thousands of nested arrays or objects
            raise AnnouncementError("payload is not valid JSON: nested too deeply") from None
        except Exception as e:  # a parser bug must not take the bridge down: it is this payload's error
            _LOGGER.debug("unreadable announcement payload", exc_info=True)
            raise AnnouncementError(f"payload could not be read ({type(e).__name__})") from None

    @classmethod
    def _parse(cls, payload: bytes | str, max_chars: int) -> Announcement:
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "surrogatepass")
        if len(payload) > 4 * max_chars + 4096:  # no text of max_chars characters is this long, even in JSON
            raise AnnouncementError(f"payload is too long: {len(payload)} bytes (text limit {max_chars} characters)")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            raise AnnouncementError(f"payload is not UTF-8 text: {e}") from None
        if not text.lstrip().startswith("{"):
            ann = cls(text=text)
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise AnnouncementError(f"payload is not valid JSON: {e}") from None
            if not isinstance(data, dict):
                raise AnnouncementError("JSON payload must be an object")
            req_id = data.get("id")
            if isinstance(req_id, bool) or not isinstance(req_id, (str, int, float, type(None))):
                raise AnnouncementError("'id' must be a string or a number")
            req_id = None if req_id is None else str(req_id)[:200]
            fields: dict[str, Any] = {}
            for key in ("text", "voice", "language", "target"):
                value = data.get(key)
                if value is not None and not isinstance(value, str):
                    raise AnnouncementError(f"{key!r} must be a string", req_id)
                fields[key] = value
            if fields["text"] is None:
                raise AnnouncementError("JSON payload has no 'text'", req_id)
            sent = data.get("time")
            if sent is not None and (isinstance(sent, bool) or not isinstance(sent, (int, float))
                                     or not math.isfinite(sent)):
                raise AnnouncementError("'time' must be Unix seconds (a number)", req_id)
            ann = cls(text=fields["text"], voice=fields["voice"] or None, language=fields["language"] or None,
                      target=fields["target"] if "target" in data else DEFAULT_TARGET, id=req_id,
                      time=None if sent is None else float(sent))
        if len(ann.text) > max_chars:
            raise AnnouncementError(f"text is too long: {len(ann.text)} characters (limit {max_chars})", ann.id)
        return ann

    def to_record(self) -> dict[str, Any]:
        """A JSON object for the spool (the default target is left out)."""
        record = asdict(self)
        if self.target is DEFAULT_TARGET:
            del record["target"]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Announcement:
        return cls(text=record["text"], voice=record.get("voice"), language=record.get("language"),
                   target=record["target"] if "target" in record else DEFAULT_TARGET, id=record.get("id"),
                   time=record.get("time"))


class DeliveryError(Exception):
    """The audio could not be delivered (target down or not reading, file not writable). The message is what
    the publisher is told: for a sink only that it is unreachable; the details are logged."""


# ------------------------------------------------------------------------------------------------ the sink
class Sink:
    """One announcement streamed to a Wyoming audio sink: a client that reads the sink's events under limits
    (size and time, like the server's own reader) and never waits without a bound."""

    def __init__(self, name: str, uri: str, connect_timeout: float, write_timeout: float) -> None:
        self.name = name
        self.uri = uri
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self.address = tcp_address(uri)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def public_name(self) -> str:
        """How errors name the sink: a configured target by its name; a URI from a payload not at all, so that
        the publisher learns nothing about what listens there."""
        return "" if self.name == self.uri else f" {self.name}"

    def _unreachable(self, detail: str) -> DeliveryError:
        _LOGGER.warning("announce target %s (%s): %s", self.name, self.uri, detail)
        return DeliveryError(f"target{self.public_name} unreachable")

    def not_played_error(self) -> str:
        return f"target{self.public_name} did not confirm playback" if self.public_name else "target unreachable"

    async def open(self) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(*self.address, limit=SINK_LINE_LIMIT), self.connect_timeout)
        except asyncio.TimeoutError:
            raise self._unreachable(f"did not answer within {self.connect_timeout:g} s") from None
        except OSError as e:
            raise self._unreachable(f"cannot connect: {e.strerror or e}") from None

    async def send(self, event: Event) -> None:
        assert self._writer is not None, "send() before open()"
        try:
            await asyncio.wait_for(async_write_event(event, self._writer), self.write_timeout)
        except asyncio.TimeoutError:
            self._abort()
            raise self._unreachable(f"stopped reading (nothing written for {self.write_timeout:g} s)") from None
        except (OSError, RuntimeError) as e:
            self._abort()
            raise self._unreachable(f"went away: {e}") from None

    async def wait_played(self, timeout: float) -> bool:
        """Whether the sink confirmed playback (``played``) within TIMEOUT seconds. Whatever else it sends is
        read under SINK_LIMITS and dropped; an oversized or malformed event ends the wait (False)."""
        assert self._reader is not None, "wait_played() before open()"
        reader = self._reader

        async def played() -> bool:
            while (event := await read_event(reader, SINK_LIMITS)) is not None:
                if event.type == _PLAYED:
                    return True
                _LOGGER.debug("announce target %s sent %s (ignored)", self.name, event.type)
            return False

        try:
            return await asyncio.wait_for(played(), timeout)
        except asyncio.TimeoutError:
            _LOGGER.debug("announce target %s: no %r within %.1f s", self.name, _PLAYED, timeout)
        except ProtocolError as e:
            _LOGGER.warning("announce target %s (%s) sent an invalid event: %s", self.name, self.uri, e)
        except OSError as e:
            _LOGGER.debug("announce target %s: %s", self.name, e)
        return False

    def _abort(self) -> None:
        """Drop the connection without flushing: a sink that stops reading would hold up a graceful close."""
        if self._writer is not None:
            self._writer.transport.abort()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 2.0)
            self._abort()


# ---------------------------------------------------------------------------------------------- WAV files
# The announce directory's WAV files: <YYYYmmdd-HHMMSS>_<id>[-N].wav. Retention only ever deletes names of this
# form, so other files kept there are safe.
_WAV_NAME_RE = re.compile(r"^\d{8}-\d{6}_[A-Za-z0-9_-]+\.wav$")
_WAV_TEMP_RE = re.compile(r"^\.[A-Za-z0-9_-]+\.[0-9a-f]+\.wav\.tmp$")


def safe_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:64]


class WavFile:
    """A WAV file written as the audio comes, given its final, unique name only when complete."""

    def __init__(self, directory: Path, req_id: str, rate: int) -> None:
        self.directory = directory
        self.stem = safe_stem(req_id) or "announcement"
        self.tmp = directory / f".{self.stem}.{secrets.token_hex(4)}.wav.tmp"
        self._open = False
        try:
            self._wav = wave.open(str(self.tmp), "wb")
            self._wav.setnchannels(CHANNELS)
            self._wav.setsampwidth(SAMPLE_WIDTH)
            self._wav.setframerate(rate)
        except OSError as e:
            raise DeliveryError(f"cannot write {self.tmp}: {e}") from None
        self._open = True

    def write(self, audio: bytes) -> None:
        try:
            self._wav.writeframesraw(audio)
        except OSError as e:
            raise DeliveryError(f"cannot write {self.tmp}: {e}") from None

    def commit(self) -> Path:
        """Close the file and link it under a name no other file has (never replacing one: ids ``a/b`` and
        ``a_b``, or the same id twice, get different files)."""
        prefix = f"{time.strftime('%Y%m%d-%H%M%S')}_{self.stem}"
        try:
            self._wav.close()
            self._open = False
            for n in range(1, 10_000):
                path = self.directory / (f"{prefix}.wav" if n == 1 else f"{prefix}-{n}.wav")
                try:
                    os.link(self.tmp, path)  # fails if the name exists, unlike a rename
                    return path
                except FileExistsError:
                    continue
            raise DeliveryError(f"no free file name for {prefix}.wav in {self.directory}")
        except OSError as e:
            raise DeliveryError(f"cannot write {self.directory / prefix}.wav: {e}") from None
        finally:
            self.discard()

    def discard(self) -> None:
        if self._open:
            with contextlib.suppress(Exception):
                self._wav.close()
            self._open = False
        with contextlib.suppress(OSError):
            self.tmp.unlink()


@dataclass(frozen=True)
class Retention:
    """How many announcement WAV files are kept, and for how long (0: no limit)."""
    keep: int = 100
    keep_days: float = 7.0

    def prune(self, directory: Path) -> int:
        """Delete the announcement files beyond the limits, oldest first, and temporary files a crash left
        behind; the number deleted."""
        try:
            names = [p.name for p in directory.iterdir()]
        except OSError as e:
            _LOGGER.warning("--announce-dir %s: %s", directory, e)
            return 0
        now = time.time()
        doomed = []
        files = []
        for name in names:
            path = directory / name
            try:
                if _WAV_NAME_RE.match(name):
                    files.append((path.stat().st_mtime, name, path))
                elif _WAV_TEMP_RE.match(name) and now - path.stat().st_mtime > 3600:
                    doomed.append(path)  # an hour old: no announcement is written for that long
            except OSError:
                continue  # deleted meanwhile
        files.sort()
        if self.keep and len(files) > self.keep:
            doomed += [path for _, _, path in files[:len(files) - self.keep]]
            files = files[len(files) - self.keep:]
        if self.keep_days:
            doomed += [path for mtime, _, path in files if now - mtime > self.keep_days * 86400]
        deleted = 0
        for path in doomed:
            try:
                path.unlink()
                deleted += 1
            except OSError as e:
                _LOGGER.debug("cannot delete %s: %s", path, e)
        if deleted:
            _LOGGER.debug("announce dir %s: deleted %d old files", directory, deleted)
        return deleted
