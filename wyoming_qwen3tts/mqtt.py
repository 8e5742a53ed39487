"""MQTT-triggered announcements: an optional bridge between an MQTT broker and the server's engine.

Topics (``<prefix>`` is ``--mqtt-topic-prefix``, default ``qwen3tts``):

* ``<prefix>/say`` (subscribed): plain UTF-8 text, or a JSON object
  ``{"text": ..., "voice": ..., "language": ..., "target": ..., "id": ...}`` (only ``text`` is required).
* ``<prefix>/result``: one JSON object per announcement, ``{"id", "ok", "path" | "error", "duration_s"}``
  (plus ``"target"`` when audio went to a Wyoming sink).
* ``<prefix>/status``: ``online`` / ``offline``, retained; ``offline`` is also the connection's last will.
* ``<prefix>/state``: ``busy`` while an announcement is synthesized and delivered, else ``idle`` (retained).
* ``homeassistant/...``: Home Assistant MQTT discovery (retained): a ``notify`` entity whose messages are
  announcements, a ``sensor`` for the state and a connectivity ``binary_sensor`` for the status.

An announcement is synthesized through the server's one :class:`EngineWorker` (so it queues behind, never beside,
Wyoming clients) and delivered as it is generated to a Wyoming audio sink (``audio-start`` / ``audio-chunk``... /
``audio-stop`` over ``tcp://host:port``, e.g. a wyoming-satellite "snd" service), and/or written to a WAV file
(16-bit mono at the model's rate) in ``--announce-dir`` whose path is published.

The bridge never gives up on the broker: a lost or unreachable broker is retried with exponential backoff
(1 s doubling to 30 s); the retained status and discovery messages are published again on every connection.
A bad announcement (not UTF-8, invalid JSON, too long, unknown voice, language or target, a target that is down)
is answered with an error result and the bridge goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import ssl
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event

from . import __version__
from .text import prepare
from .voices import Voice, voice_request

if TYPE_CHECKING:
    import aiomqtt

    from .handler import ServerSettings
    from .worker import EngineWorker

_LOGGER = logging.getLogger(__name__)

SAMPLE_WIDTH = 2  # 16-bit PCM
CHANNELS = 1
MANUFACTURER = "Qwen3-TTS on ggml"
_PLAYED = "played"  # wyoming.snd.Played: what a sound service answers once the audio has been played


# ------------------------------------------------------------------------------------------------- options
def _target_arg(value: str) -> tuple[str, str]:
    name, sep, uri = value.partition("=")
    name = name.strip()
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=tcp://host:port, got {value!r}")
    try:
        _tcp_address(uri.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name, uri.strip()


def add_mqtt_arguments(parser: argparse.ArgumentParser) -> None:
    """The bridge's command-line options (all optional; the bridge runs when --mqtt-host is given)."""
    g = parser.add_argument_group("MQTT announcements")
    g.add_argument("--mqtt-host", help="MQTT broker host: enables the announcement bridge")
    g.add_argument("--mqtt-port", type=int, help="MQTT broker port (default: 1883, 8883 with --mqtt-tls)")
    g.add_argument("--mqtt-username", help="MQTT user name")
    pw = g.add_mutually_exclusive_group()
    pw.add_argument("--mqtt-password", help="MQTT password (prefer --mqtt-password-file)")
    pw.add_argument("--mqtt-password-file", type=Path, help="file holding the MQTT password")
    g.add_argument("--mqtt-tls", action="store_true", help="connect to the broker over TLS")
    g.add_argument("--mqtt-ca-file", type=Path, help="CA certificate(s) for --mqtt-tls (default: the system's)")
    g.add_argument("--mqtt-topic-prefix", default="qwen3tts", help="topic prefix (default: %(default)s)")
    g.add_argument("--mqtt-client-id", help="MQTT client id (default: a random one)")
    g.add_argument("--mqtt-discovery-prefix", default="homeassistant",
                   help="Home Assistant MQTT discovery prefix; 'none' disables discovery (default: %(default)s)")
    g.add_argument("--announce-target", type=_target_arg, action="append", default=[], metavar="NAME=URI",
                   help="a Wyoming audio sink announcements can be sent to, e.g. kitchen=tcp://10.0.0.5:10601 "
                        "(repeatable)")
    g.add_argument("--announce-default", metavar="NAME", help="target of announcements that name none")
    g.add_argument("--announce-dir", type=Path, help="write each announcement as a WAV file here (16-bit mono)")


@dataclass
class MqttConfig:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    topic_prefix: str = "qwen3tts"
    client_id: str | None = None
    discovery_prefix: str | None = "homeassistant"
    targets: dict[str, str] = field(default_factory=dict)  # name -> tcp://host:port
    default_target: str | None = None
    announce_dir: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MqttConfig:
        """Raises ValueError for inconsistent options (unknown --announce-default, unreadable password file)."""
        password = args.mqtt_password
        if args.mqtt_password_file:
            try:
                password = args.mqtt_password_file.read_text(encoding="utf-8").strip("\r\n")
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"--mqtt-password-file: {e}") from None
        targets: dict[str, str] = {}
        for name, uri in args.announce_target:
            if name in targets:
                raise ValueError(f"--announce-target {name!r} given twice")
            targets[name] = uri
        if args.announce_default and args.announce_default not in targets:
            raise ValueError(f"--announce-default {args.announce_default!r} is not an --announce-target "
                             f"(targets: {', '.join(targets) or 'none'})")
        prefix = args.mqtt_topic_prefix.strip("/")
        if not prefix or any(c in prefix for c in "+#"):
            raise ValueError(f"--mqtt-topic-prefix {args.mqtt_topic_prefix!r} is not a valid topic prefix")
        discovery = (args.mqtt_discovery_prefix or "").strip("/")
        if args.mqtt_ca_file and not args.mqtt_tls:
            raise ValueError("--mqtt-ca-file needs --mqtt-tls")
        if args.mqtt_ca_file and not args.mqtt_ca_file.is_file():
            raise ValueError(f"--mqtt-ca-file {args.mqtt_ca_file}: no such file")
        return cls(host=args.mqtt_host, port=args.mqtt_port or (8883 if args.mqtt_tls else 1883),
                   username=args.mqtt_username, password=password, tls=args.mqtt_tls, ca_file=args.mqtt_ca_file,
                   topic_prefix=prefix, client_id=args.mqtt_client_id,
                   discovery_prefix=None if discovery.lower() in ("", "none") else discovery,
                   targets=targets, default_target=args.announce_default, announce_dir=args.announce_dir)


def _tcp_address(uri: str) -> tuple[str, int]:
    parsed = urlparse(uri)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme != "tcp" or not parsed.hostname or port is None:
        raise ValueError(f"not a tcp://host:port URI: {uri!r}")
    return parsed.hostname, port


# -------------------------------------------------------------------------------------------- announcements
class AnnouncementError(ValueError):
    """A payload that is not a valid announcement; ``id`` is the request's id where it could be read."""

    def __init__(self, message: str, id: str | None = None) -> None:
        super().__init__(message)
        self.id = id


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


_DEFAULT: Any = _Default()  # Announcement.target when the payload names none: the --announce-default


@dataclass(frozen=True)
class Announcement:
    text: str
    voice: str | None = None
    language: str | None = None
    target: str | None = _DEFAULT  # a target name, a tcp:// URI, None (no sink: file only) or _DEFAULT
    id: str | None = None

    @classmethod
    def parse(cls, payload: bytes | str, max_chars: int) -> Announcement:
        """Plain UTF-8 text, or a JSON object with "text" and optional "voice", "language", "target" (a name, a
        tcp:// URI, or null for no sink) and "id" (a string or number). Raises AnnouncementError."""
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
            ann = cls(text=fields["text"], voice=fields["voice"] or None, language=fields["language"] or None,
                      target=fields["target"] if "target" in data else _DEFAULT, id=req_id)
        if len(ann.text) > max_chars:
            raise AnnouncementError(f"text is too long: {len(ann.text)} characters (limit {max_chars})", ann.id)
        return ann


class DeliveryError(Exception):
    """The audio could not be delivered (target down or not reading, file not writable)."""


# ------------------------------------------------------------------------------------------------ delivery
class _Sink:
    """One announcement streamed to a Wyoming audio sink."""

    def __init__(self, name: str, uri: str, connect_timeout: float, write_timeout: float) -> None:
        self.name = name
        self.uri = uri
        self.write_timeout = write_timeout
        host, port = _tcp_address(uri)
        self.client = AsyncTcpClient(host, port, connect_timeout=connect_timeout)

    async def open(self) -> None:
        try:
            await self.client.connect()
        except asyncio.TimeoutError:
            raise DeliveryError(f"target {self.name} ({self.uri}) did not answer within "
                                f"{self.client.connect_timeout:g} s") from None
        except OSError as e:
            raise DeliveryError(f"target {self.name} ({self.uri}) is unreachable: {e.strerror or e}") from None

    async def send(self, event: Event) -> None:
        try:
            await asyncio.wait_for(self.client.write_event(event), self.write_timeout)
        except asyncio.TimeoutError:
            self._abort()
            raise DeliveryError(f"target {self.name} ({self.uri}) stopped reading "
                                f"(nothing written for {self.write_timeout:g} s)") from None
        except (OSError, RuntimeError) as e:  # RuntimeError: wyoming's "not connected"
            raise DeliveryError(f"target {self.name} ({self.uri}) went away: {e}") from None

    async def wait_played(self, timeout: float) -> bool:
        """Wait (bounded) for the sink's ``played``; a sink that closes the connection or says nothing is fine."""
        async def played() -> bool:
            while (event := await self.client.read_event()) is not None:
                if event.type == _PLAYED:
                    return True
            return False

        try:
            return await asyncio.wait_for(played(), timeout)
        except (asyncio.TimeoutError, OSError, RuntimeError, ValueError):
            return False

    def _abort(self) -> None:
        """Drop the connection without flushing: a sink that stops reading would hold up a graceful close."""
        writer = getattr(self.client, "_writer", None)  # wyoming's AsyncTcpClient keeps its StreamWriter here
        if writer is not None:
            writer.transport.abort()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.disconnect(), 2.0)


class _WavFile:
    """A WAV file written as the audio comes, made visible (renamed into place) only when complete."""

    def __init__(self, directory: Path, stem: str, rate: int) -> None:
        self.path = directory / f"{stem}.wav"
        self.tmp = directory / f".{stem}.wav.{secrets.token_hex(4)}.part"
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
        try:
            self._wav.close()
            self._open = False
            os.replace(self.tmp, self.path)
        except OSError as e:
            raise DeliveryError(f"cannot write {self.path}: {e}") from None
        return self.path

    def discard(self) -> None:
        if self._open:
            with contextlib.suppress(Exception):
                self._wav.close()
            self._open = False
        with contextlib.suppress(OSError):
            self.tmp.unlink()


def _safe_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:64]


def _new_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


# -------------------------------------------------------------------------------------------------- bridge
class MqttBridge:
    """Runs until cancelled: connects to the broker (again and again), serves ``<prefix>/say``."""

    backoff_min_s = 1.0
    backoff_max_s = 30.0
    connect_timeout_s = 5.0   # to a Wyoming sink
    write_timeout_s = 10.0    # one event to a Wyoming sink
    played_slack_s = 5.0      # waiting for a sink's "played": the audio's duration plus this (capped)
    played_max_s = 120.0
    mqtt_timeout_s = 10.0     # broker operations (connect, publish, subscribe)
    keepalive_s = 30

    def __init__(self, config: MqttConfig, worker: EngineWorker, voices: dict[str, Voice],
                 settings: ServerSettings, model_languages: list[str], sample_rate: int,
                 model_name: str | None = None) -> None:
        self.config = config
        self.worker = worker
        self.voices = voices
        self.settings = settings
        self.model_languages = model_languages
        self.sample_rate = sample_rate
        self.model_name = model_name
        p = config.topic_prefix
        self.say_topic, self.result_topic = f"{p}/say", f"{p}/result"
        self.status_topic, self.state_topic = f"{p}/status", f"{p}/state"
        self.node_id = re.sub(r"[^A-Za-z0-9_-]", "_", p)

    @classmethod
    def from_args(cls, args: argparse.Namespace, worker: EngineWorker, voices: dict[str, Voice],
                  settings: ServerSettings, model_languages: list[str], sample_rate: int,
                  model_name: str | None = None) -> MqttBridge:
        return cls(MqttConfig.from_args(args), worker, voices, settings, model_languages, sample_rate, model_name)

    # ------------------------------------------------------------------------------------------ connection
    def _client(self) -> aiomqtt.Client:
        import aiomqtt

        c = self.config
        tls_context = None
        if c.tls:
            tls_context = ssl.create_default_context(cafile=str(c.ca_file) if c.ca_file else None)
        return aiomqtt.Client(
            c.host, c.port, username=c.username, password=c.password, identifier=c.client_id,
            will=aiomqtt.Will(self.status_topic, "offline", qos=1, retain=True), tls_context=tls_context,
            timeout=self.mqtt_timeout_s, keepalive=self.keepalive_s, max_queued_incoming_messages=1000)

    async def run(self) -> None:
        """Serve until cancelled. Broker trouble is logged and retried with exponential backoff, never raised."""
        import aiomqtt

        c = self.config
        if c.announce_dir is not None:
            try:
                c.announce_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                _LOGGER.warning("--announce-dir %s: %s", c.announce_dir, e)
        delay = self.backoff_min_s
        while True:
            connected = False
            try:
                async with self._client() as client:
                    connected = True
                    delay = self.backoff_min_s
                    try:
                        await self._session(client)
                    except asyncio.CancelledError:
                        # A clean disconnect does not trigger the last will: say goodbye ourselves.
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(self._publish(client, self.status_topic, "offline", True), 2.0)
                            _LOGGER.info("MQTT: stopped (%s is offline)", self.status_topic)
                        raise
            except aiomqtt.MqttError as e:
                if connected:
                    _LOGGER.warning("MQTT connection to %s:%d lost: %s", c.host, c.port, e)
                else:
                    _LOGGER.warning("MQTT broker %s:%d unreachable: %s", c.host, c.port, e)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the bridge take the server down
                _LOGGER.exception("MQTT bridge failed")
            _LOGGER.info("MQTT: reconnecting in %g s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)

    async def _session(self, client: aiomqtt.Client) -> None:
        c = self.config
        # Entities first, their state, then "online": whoever sees "online" finds the rest retained already.
        await self._publish_discovery(client)
        await self._publish(client, self.state_topic, "idle", retain=True)
        await client.subscribe(self.say_topic, qos=1)
        ha_status = f"{c.discovery_prefix}/status" if c.discovery_prefix else None
        if ha_status:
            await client.subscribe(ha_status, qos=1)
        await self._publish(client, self.status_topic, "online", retain=True)
        _LOGGER.info("MQTT connected to %s:%d; announcements on %s", c.host, c.port, self.say_topic)
        async for message in client.messages:
            if message.topic.matches(self.say_topic):
                if message.retain:
                    _LOGGER.warning("ignoring a retained message on %s (publish announcements without retain)",
                                    self.say_topic)
                    continue
                await self._announce(client, message.payload)
            elif ha_status and message.topic.matches(ha_status) and message.payload in (b"online", "online"):
                _LOGGER.debug("Home Assistant (re)started: discovery published again")
                await self._publish_discovery(client)

    async def _publish(self, client: aiomqtt.Client, topic: str, payload: str, retain: bool = False) -> None:
        await client.publish(topic, payload, qos=1, retain=retain)

    # ----------------------------------------------------------------------------------- discovery
    def discovery_messages(self) -> dict[str, dict[str, Any]]:
        """Home Assistant MQTT discovery: config topic -> payload."""
        c = self.config
        if not c.discovery_prefix:
            return {}
        device: dict[str, Any] = {
            "identifiers": [f"wyoming_qwen3tts_{self.node_id}"],
            "name": "Qwen3-TTS" if c.topic_prefix == "qwen3tts" else f"Qwen3-TTS ({c.topic_prefix})",
            "manufacturer": MANUFACTURER,
            "sw_version": __version__,
        }
        if self.model_name:
            device["model"] = self.model_name
        common = {
            "device": device,
            "origin": {"name": "wyoming-qwen3tts", "sw_version": __version__},
        }
        available = {"availability_topic": self.status_topic, "payload_available": "online",
                     "payload_not_available": "offline"}
        base = f"{c.discovery_prefix}/{{}}/{self.node_id}/{{}}/config"
        return {
            base.format("notify", "announce"): {
                **common, **available, "name": "Announce", "unique_id": f"{self.node_id}_announce",
                "command_topic": self.say_topic, "qos": 1, "retain": False, "icon": "mdi:bullhorn",
            },
            base.format("sensor", "state"): {
                **common, **available, "name": "State", "unique_id": f"{self.node_id}_state",
                "state_topic": self.state_topic, "device_class": "enum", "options": ["idle", "busy"],
                "icon": "mdi:account-voice",
            },
            base.format("binary_sensor", "status"): {
                **common, "name": "Status", "unique_id": f"{self.node_id}_status",
                "state_topic": self.status_topic, "payload_on": "online", "payload_off": "offline",
                "device_class": "connectivity", "entity_category": "diagnostic",
            },
        }

    async def _publish_discovery(self, client: aiomqtt.Client) -> None:
        for topic, payload in self.discovery_messages().items():
            await self._publish(client, topic, json.dumps(payload), retain=True)

    # --------------------------------------------------------------------------------- announcements
    async def _announce(self, client: aiomqtt.Client, payload: Any) -> None:
        if payload is None:
            payload = b""
        elif isinstance(payload, (int, float)):
            payload = str(payload)
        t0 = time.perf_counter()
        result: dict[str, Any]
        try:
            ann = Announcement.parse(payload, self.settings.max_text_chars)
        except AnnouncementError as e:
            result = {"id": e.id or _new_id(), "ok": False, "error": str(e), "duration_s": 0.0}
        else:
            await self._publish(client, self.state_topic, "busy", retain=True)
            try:
                result = await self._deliver(ann)
            finally:
                # not when the broker is gone: the next session publishes "idle" anyway
                with contextlib.suppress(Exception):
                    await self._publish(client, self.state_topic, "idle", retain=True)
        if result["ok"]:
            _LOGGER.info("announcement %s: %.2f s of audio to %s in %.2f s", result["id"], result["duration_s"],
                         " and ".join(str(result[k]) for k in ("target", "path") if k in result),
                         time.perf_counter() - t0)
        else:
            _LOGGER.warning("announcement %s failed: %s", result["id"], result["error"])
        await self._publish(client, self.result_topic, json.dumps(result))

    def _resolve_target(self, target: str | None) -> tuple[str, str] | None:
        c = self.config
        if target is _DEFAULT:
            target = c.default_target
        if target is None or target.strip() == "":
            return None
        if target in c.targets:
            return target, c.targets[target]
        if target.lower() == "none":
            return None
        if target.startswith("tcp://"):
            _tcp_address(target)  # ValueError for a malformed one
            return target, target
        raise ValueError(f"unknown target {target!r}; targets: {', '.join(c.targets) or 'none'} "
                         "(or a tcp://host:port URI)")

    async def _deliver(self, ann: Announcement) -> dict[str, Any]:
        """Synthesize one announcement and deliver it; the result message (never raises for bad input)."""
        req_id = ann.id or _new_id()
        samples = 0
        sink: _Sink | None = None
        wav: _WavFile | None = None
        try:
            segments = prepare(ann.text, None, self.settings.max_text_chars)
            voice = voice_request(self.voices, self.model_languages, ann.voice, ann.language,
                                  self.settings.default_voice, self.settings.default_language)
            target = self._resolve_target(ann.target)
            if target is None and self.config.announce_dir is None:
                raise ValueError("nowhere to deliver: no target given, no --announce-default and no --announce-dir")
            if target is not None:
                sink = _Sink(*target, connect_timeout=self.connect_timeout_s, write_timeout=self.write_timeout_s)
                await sink.open()
            if self.config.announce_dir is not None:
                wav = _WavFile(self.config.announce_dir, _safe_stem(req_id) or _new_id(), self.sample_rate)
            rate = self.sample_rate
            if sink:
                await sink.send(AudioStart(rate=rate, width=SAMPLE_WIDTH, channels=CHANNELS).event())
            step = max(1, self.settings.samples_per_chunk)
            _LOGGER.debug("announcement %s: %r with %s", req_id, ann.text, voice)
            for segment in segments:  # plain text: sentences only, no pauses
                chunks = self.worker.stream({**self.settings.generation, **voice, "text": segment.text})
                try:
                    async for pcm in chunks:
                        audio = (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2")
                        if wav:
                            wav.write(audio.tobytes())
                        for i in range(0, len(audio), step):
                            piece = audio[i:i + step]
                            if sink:
                                await sink.send(AudioChunk(rate=rate, width=SAMPLE_WIDTH, channels=CHANNELS,
                                                           audio=piece.tobytes(),
                                                           timestamp=samples * 1000 // rate).event())
                            samples += len(piece)
                finally:
                    await chunks.aclose()
            if sink:
                await sink.send(AudioStop(timestamp=samples * 1000 // rate).event())
            result: dict[str, Any] = {"id": req_id, "ok": True}
            if wav:
                result["path"] = str(wav.commit().resolve())
            if sink:
                result["target"] = sink.name
                await sink.wait_played(min(samples / rate + self.played_slack_s, self.played_max_s))
        except (ValueError, DeliveryError) as e:
            return {"id": req_id, "ok": False, "error": str(e), "duration_s": round(samples / self.sample_rate, 3)}
        except Exception as e:  # an engine failure: report it, keep serving
            _LOGGER.exception("announcement %s failed", req_id)
            return {"id": req_id, "ok": False, "error": f"internal error: {e!r}",
                    "duration_s": round(samples / self.sample_rate, 3)}
        finally:
            if wav:
                wav.discard()
            if sink:
                await sink.close()
        result["duration_s"] = round(samples / self.sample_rate, 3)
        return result


async def stop_bridge(task: asyncio.Task[None]) -> None:
    """Cancel the bridge's task and wait (bounded) for its goodbye on ``<prefix>/status``."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError, Exception):
        await asyncio.wait_for(task, 5.0)
