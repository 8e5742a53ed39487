"""The MQTT bridge's spool: announcements that were received but whose result is not published yet.

Every announcement is one JSON file ``<sequence number>.json`` in the spool directory, written atomically
(temporary file, fsync, rename, fsync of the directory; see :meth:`Spool.add` for the one exception) while the MQTT client is still handling the message,
that is before the broker gets its PUBACK. An entry either waits to be spoken (``"announcement"``) or holds the
result waiting to be published (``"result"``; written over the entry once the announcement is done, so that a
restart never speaks it twice); it is deleted once the broker acknowledged that result. On start the entries
are read back in arrival order (their sequence numbers).

A spool that cannot be written (read-only or full disk) does not stop the bridge: the announcement is kept in
memory only, and the failure is logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger(__name__)

_ENTRY_RE = re.compile(r"^(\d{12})\.json$")
_TEMP_SUFFIX = ".tmp"


@dataclass
class SpoolEntry:
    seq: int
    received: float                       # time.time() when the bridge received the message
    announcement: dict[str, Any] | None   # waiting to be spoken (Announcement.to_record())
    result: dict[str, Any] | None = None  # waiting to be published
    message_key: str | None = None        # the MQTT message's identity, to recognize the broker's redelivery
    durable: bool = False                 # written to disk (False: the spool was not writable)

    def record(self) -> dict[str, Any]:
        data: dict[str, Any] = {"received": self.received, "message_key": self.message_key}
        if self.result is not None:
            data["result"] = self.result
        else:
            data["announcement"] = self.announcement
        return data


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._next_seq = 0
        self._warned = False

    def open(self) -> list[SpoolEntry]:
        """Create the directory, drop half-written temporary files, and return the entries left by an earlier
        run in arrival order. An entry that cannot be read is returned with an error result (and logged)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            names = sorted(p.name for p in self.directory.iterdir())
        except OSError as e:
            self._write_failed(e)
            return []
        entries = []
        for name in names:
            path = self.directory / name
            if name.endswith(_TEMP_SUFFIX):  # a write that did not complete: its message was never acknowledged
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            m = _ENTRY_RE.match(name)
            if m:
                entries.append(self._load(int(m[1]), path))
        self._next_seq = entries[-1].seq + 1 if entries else 0
        return entries

    def _load(self, seq: int, path: Path) -> SpoolEntry:
        try:
            data = json.loads(path.read_bytes())
            received = float(data["received"])
            announcement, result = data.get("announcement"), data.get("result")
            if not isinstance(announcement if result is None else result, dict):
                raise ValueError("neither an announcement nor a result")
        except (OSError, ValueError, KeyError, TypeError) as e:
            _LOGGER.error("MQTT spool entry %s is unreadable (%s): answering it with an error", path, e)
            return SpoolEntry(seq, path.stat().st_mtime if path.exists() else 0.0, None,
                              {"ok": False, "error": "the spooled announcement could not be read back"},
                              durable=True)
        key = data.get("message_key")
        return SpoolEntry(seq, received, announcement if result is None else None, result,
                          key if isinstance(key, str) else None, durable=True)

    def add(self, received: float, announcement: dict[str, Any] | None = None,
            result: dict[str, Any] | None = None, message_key: str | None = None) -> SpoolEntry:
        """A new entry. An announcement is synced to the disk; a result (an announcement answered at once, e.g.
        "queue full" in a burst) is only written: a crash of the server keeps it, a power cut may not, and a
        burst costs no fsync per message."""
        entry = SpoolEntry(self._next_seq, received, announcement, result, message_key)
        self._next_seq += 1
        self._write(entry, sync=result is None)
        return entry

    def finish(self, entry: SpoolEntry, result: dict[str, Any]) -> None:
        """Replace the entry's announcement by its result (to be published). Thread-safe for one entry."""
        entry.result, entry.announcement = result, None
        self._write(entry)

    def remove(self, entry: SpoolEntry) -> None:
        """Thread-safe."""
        if entry.durable:
            try:
                self._path(entry).unlink()
            except OSError as e:
                _LOGGER.warning("MQTT spool: cannot remove %s: %s", self._path(entry), e)

    def _path(self, entry: SpoolEntry) -> Path:
        return self.directory / f"{entry.seq:012d}.json"

    def _write(self, entry: SpoolEntry, sync: bool = True) -> None:
        path = self._path(entry)
        tmp = path.with_name(path.name + _TEMP_SUFFIX)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, json.dumps(entry.record(), ensure_ascii=False).encode("utf-8"))
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            if sync:
                self._fsync_directory()
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._write_failed(e)
            return
        entry.durable = True

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_failed(self, error: OSError) -> None:
        log = _LOGGER.debug if self._warned else _LOGGER.error
        log("MQTT spool %s is not writable (%s): announcements are kept in memory only and are lost if the "
            "server stops before they are answered", self.directory, error)
        self._warned = True
