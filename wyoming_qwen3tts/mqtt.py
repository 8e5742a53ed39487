"""MQTT-triggered announcements: an optional bridge between an MQTT broker and the server's engine.

Topics (``<prefix>`` is ``--mqtt-topic-prefix``, default ``qwen3tts``):

* ``<prefix>/say`` (subscribed, QoS 1): plain UTF-8 text, or a JSON object
  ``{"text": ..., "voice": ..., "language": ..., "target": ..., "id": ...}`` (only ``text`` is required).
* ``<prefix>/result``: exactly one JSON object per announcement, ``{"id", "ok", "path" | "error", "duration_s"}``
  (plus ``"target"`` and ``"played"`` when audio went to a Wyoming sink).
* ``<prefix>/status``: ``online`` / ``offline``, retained; ``offline`` is also the connection's last will.
* ``<prefix>/state``: ``busy`` while an announcement is synthesized and delivered, else ``idle`` (retained).
* ``homeassistant/...``: Home Assistant MQTT discovery (retained): a ``notify`` entity whose messages are
  announcements, a ``sensor`` for the state and a connectivity ``binary_sensor`` for the status.

Nothing is lost: the bridge keeps a persistent MQTT session (clean_session off, a stable client id derived from
the topic prefix), so the broker holds announcements published while the server is away; each announcement is
written to the spool (:mod:`.mqtt_spool`) inside the MQTT client's message callback, i.e. before the broker gets
its PUBACK, and leaves the spool only after its result was acknowledged by the broker. Announcements are taken
in arrival order by one speaker task, which ages them out (``"expired"``) after ``--announce-max-age``; beyond
``--announce-queue-size`` waiting ones, new ones are answered ``"queue full"`` at once. A payload that cannot be
parsed (whatever it holds) is answered with an error result; the session stays up.

An announcement is synthesized through the server's one :class:`EngineWorker` (so it queues behind, never beside,
Wyoming clients) and delivered as it is generated to a Wyoming audio sink (``audio-start`` / ``audio-chunk``... /
``audio-stop`` over ``tcp://host:port``, e.g. a wyoming-satellite "snd" service; only the ``--announce-target``
names unless ``--announce-allow-uri``), and/or written to a WAV file (16-bit mono at the model's rate) in
``--announce-dir`` under a unique name, with a retention rule. ``ok`` means the sink confirmed playback.

The bridge never gives up on the broker: a lost or unreachable broker is retried with exponential backoff
(1 s doubling to 30 s); the retained status and discovery messages are published again on every connection.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import hashlib
import json
import logging
import re
import ssl
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from . import __version__
from .audio_events import audio_chunks, audio_start, audio_stop, pcm16
from .download import default_data_dir
from .mqtt_delivery import (DEFAULT_TARGET, Announcement, AnnouncementError, DeliveryError, Retention, Sink, WavFile,
                            new_id, tcp_address)
from .mqtt_spool import Spool, SpoolEntry
from .text import prepare
from .voices import Voice, voice_request

if TYPE_CHECKING:
    import aiomqtt

    from .handler import ServerSettings
    from .worker import EngineWorker

_LOGGER = logging.getLogger(__name__)

MANUFACTURER = "Qwen3-TTS on ggml"
DEFAULT_QUEUE_SIZE = 1000
DEFAULT_MAX_AGE_S = 600.0


# ------------------------------------------------------------------------------------------------- options
def _target_arg(value: str) -> tuple[str, str]:
    name, sep, uri = value.partition("=")
    name = name.strip()
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=tcp://host:port, got {value!r}")
    try:
        tcp_address(uri.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name, uri.strip()


def _number_arg(kind: Callable[[str], float], minimum: float, what: str) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or not number >= minimum:  # (also rejects NaN)
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return number
    return parse


# the dests of the options that mean nothing without --mqtt-host (check_mqtt_arguments)
_NEEDS_MQTT_HOST: dict[str, str] = {}


def add_mqtt_arguments(parser: argparse.ArgumentParser) -> None:
    """The bridge's command-line options (all optional; the bridge runs when --mqtt-host is given)."""
    g = parser.add_argument_group("MQTT announcements")

    def add(*flags: str, **kwargs: Any) -> None:
        action = g.add_argument(*flags, **kwargs)
        _NEEDS_MQTT_HOST[action.dest] = "/".join(flags)

    g.add_argument("--mqtt-host", help="MQTT broker host: enables the announcement bridge")
    add("--mqtt-port", type=int, help="MQTT broker port (default: 1883, 8883 with --mqtt-tls)")
    add("--mqtt-username", help="MQTT user name")
    pw = g.add_mutually_exclusive_group()
    for flag, kwargs in (("--mqtt-password", dict(help="MQTT password (prefer --mqtt-password-file)")),
                         ("--mqtt-password-file", dict(type=Path, help="file holding the MQTT password"))):
        action = pw.add_argument(flag, **kwargs)
        _NEEDS_MQTT_HOST[action.dest] = flag
    add("--mqtt-tls", action="store_true", help="connect to the broker over TLS")
    add("--mqtt-ca-file", type=Path, help="CA certificate(s) for --mqtt-tls (default: the system's)")
    add("--mqtt-topic-prefix", default="qwen3tts", help="topic prefix (default: %(default)s)")
    add("--mqtt-client-id", help="MQTT client id, under which the broker keeps the bridge's session "
                                 "(default: wyoming-qwen3tts-<topic prefix>)")
    add("--mqtt-discovery-prefix", default="homeassistant",
        help="Home Assistant MQTT discovery prefix; 'none' disables discovery (default: %(default)s)")
    add("--announce-target", type=_target_arg, action="append", default=[], metavar="NAME=URI",
        help="a Wyoming audio sink announcements can be sent to, e.g. kitchen=tcp://10.0.0.5:10601 (repeatable)")
    add("--announce-default", metavar="NAME", help="target of announcements that name none")
    add("--announce-allow-uri", action="store_true",
        help="let announcements name any tcp://host:port as their target (default: only --announce-target names)")
    add("--announce-dir", type=Path, help="write each announcement as a WAV file here (16-bit mono)")
    add("--announce-keep", type=_number_arg(int, 0, "a whole number >= 0"), default=100, metavar="N",
        help="keep the newest N announcement WAV files in --announce-dir, 0: no limit (default: %(default)s)")
    add("--announce-keep-days", type=_number_arg(float, 0, "a number of days >= 0"), default=7.0, metavar="DAYS",
        help="delete announcement WAV files older than this, 0: never (default: %(default)g)")
    add("--announce-queue-size", type=_number_arg(int, 1, "a whole number >= 1"), default=DEFAULT_QUEUE_SIZE,
        metavar="N", help="announcements waiting at most; more are answered 'queue full' (default: %(default)s)")
    add("--announce-max-age", type=_number_arg(float, 0.001, "a number of seconds > 0"), default=DEFAULT_MAX_AGE_S,
        metavar="SECONDS", help="announcements not started this long after they arrived are answered 'expired' "
                                "instead of spoken (default: %(default)g)")


def check_mqtt_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """parser.error() for bridge options given without --mqtt-host: they would be ignored silently."""
    if args.mqtt_host:
        return
    given = [flag for dest, flag in _NEEDS_MQTT_HOST.items()
             if hasattr(args, dest) and getattr(args, dest) != parser.get_default(dest)]
    if given:
        parser.error(f"{', '.join(given)} need(s) --mqtt-host: announcements arrive over MQTT")


@dataclass
class MqttConfig:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    topic_prefix: str = "qwen3tts"
    client_id: str = "wyoming-qwen3tts-qwen3tts"
    discovery_prefix: str | None = "homeassistant"
    targets: dict[str, str] = field(default_factory=dict)  # name -> tcp://host:port
    default_target: str | None = None
    allow_uri: bool = False
    announce_dir: Path | None = None
    retention: Retention = field(default_factory=Retention)
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_age_s: float = DEFAULT_MAX_AGE_S
    spool_dir: Path | None = None  # None: no spool (announcements in memory only)

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
        client_id = args.mqtt_client_id or f"wyoming-qwen3tts-{_node_id(prefix)}"
        data_dir = getattr(args, "data_dir", None) or default_data_dir()
        return cls(host=args.mqtt_host, port=args.mqtt_port or (8883 if args.mqtt_tls else 1883),
                   username=args.mqtt_username, password=password, tls=args.mqtt_tls, ca_file=args.mqtt_ca_file,
                   topic_prefix=prefix, client_id=client_id,
                   discovery_prefix=None if discovery.lower() in ("", "none") else discovery,
                   targets=targets, default_target=args.announce_default, allow_uri=args.announce_allow_uri,
                   announce_dir=args.announce_dir,
                   retention=Retention(keep=args.announce_keep, keep_days=args.announce_keep_days),
                   queue_size=args.announce_queue_size, max_age_s=args.announce_max_age,
                   spool_dir=Path(data_dir) / "mqtt-spool" / _node_id(client_id))


def _node_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


class _ArrivalQueue(asyncio.Queue):
    """aiomqtt's incoming-message queue (its ``queue_type``), unbounded so that it never drops a message. Each
    message is first offered to ON_ARRIVAL, which runs inside paho's message callback, that is before paho
    acknowledges the message to the broker; what ON_ARRIVAL takes (announcements) is not queued here."""

    def __init__(self, on_arrival: Callable[[aiomqtt.Message], bool], maxsize: int = 0) -> None:
        super().__init__()
        self._on_arrival = on_arrival

    def put_nowait(self, item: aiomqtt.Message) -> None:
        if not self._on_arrival(item):
            super().put_nowait(item)


async def _until_one_fails(*coroutines: Awaitable[None]) -> None:
    """Run the coroutines side by side until one of them raises (that exception is raised); cancel the rest."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


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
    state_timeout_s = 2.0     # publishing busy / idle must not hold up an announcement for longer
    keepalive_s = 30
    recent_keys_kept = 10_000  # packet ids cycle through 65535: a redelivery comes long before its id is reused

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
        self.node_id = _node_id(p)
        self._spool = Spool(config.spool_dir) if config.spool_dir else None
        self._waiting: asyncio.Queue[SpoolEntry] = asyncio.Queue()  # announcements to speak, in arrival order
        self._open = 0                                                # announcements received, not yet done
        self._outbox: collections.deque[SpoolEntry] = collections.deque()  # results to publish, in order
        self._outbox_ready = asyncio.Event()
        self._overflowing = 0  # "queue full" answers since the queue was last below its bound
        # the keys of recently received messages: a QoS 1 message whose PUBACK the broker lost (it restarted) is
        # delivered again, with the same packet id and payload, and must not be answered twice
        self._recent_keys: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._client: aiomqtt.Client | None = None  # while connected
        self._state = "idle"

    @classmethod
    def from_args(cls, args: argparse.Namespace, worker: EngineWorker, voices: dict[str, Voice],
                  settings: ServerSettings, model_languages: list[str], sample_rate: int,
                  model_name: str | None = None) -> MqttBridge:
        return cls(MqttConfig.from_args(args), worker, voices, settings, model_languages, sample_rate, model_name)

    # ------------------------------------------------------------------------------------------ connection
    def _new_client(self) -> aiomqtt.Client:
        import aiomqtt

        c = self.config
        tls_context = None
        if c.tls:
            tls_context = ssl.create_default_context(cafile=str(c.ca_file) if c.ca_file else None)
        return aiomqtt.Client(
            c.host, c.port, username=c.username, password=c.password, identifier=c.client_id,
            clean_session=False, will=aiomqtt.Will(self.status_topic, "offline", qos=1, retain=True),
            tls_context=tls_context, timeout=self.mqtt_timeout_s, keepalive=self.keepalive_s,
            queue_type=functools.partial(_ArrivalQueue, self._on_arrival))

    async def run(self) -> None:
        """Serve until cancelled. Broker trouble is logged and retried with exponential backoff, never raised."""
        import aiomqtt

        c = self.config
        self._prepare()
        speaker = asyncio.create_task(self._speak_all(), name="mqtt-speaker")
        delay = self.backoff_min_s
        try:
            while True:
                connected = False
                try:
                    async with self._new_client() as client:
                        connected = True
                        delay = self.backoff_min_s
                        try:
                            await self._session(client)
                        except asyncio.CancelledError:
                            # A clean disconnect does not trigger the last will: say goodbye ourselves.
                            with contextlib.suppress(Exception):
                                await asyncio.wait_for(self._publish(client, self.status_topic, "offline", True),
                                                       2.0)
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
        finally:
            speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=True)

    def _prepare(self) -> None:
        """The announce directory (created, pruned) and what an earlier run left in the spool (queued again)."""
        c = self.config
        if c.announce_dir is not None:
            try:
                c.announce_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                _LOGGER.warning("--announce-dir %s: %s", c.announce_dir, e)
            c.retention.prune(c.announce_dir)
        entries = self._spool.open() if self._spool is not None else []
        for entry in entries:
            if entry.message_key:
                self._recent_keys[entry.message_key] = None
            if entry.result is not None:
                self._post_result(entry)
            else:
                self._open += 1
                self._waiting.put_nowait(entry)
        if entries:
            _LOGGER.info("MQTT: %d announcements from the spool: %d to speak, %d results to publish",
                         len(entries), self._open, len(entries) - self._open)

    async def _session(self, client: aiomqtt.Client) -> None:
        c = self.config
        # Entities first, their state, then "online": whoever sees "online" finds the rest retained already.
        await self._publish_discovery(client)
        await self._publish(client, self.state_topic, self._state, retain=True)
        await client.subscribe(self.say_topic, qos=1)
        ha_status = f"{c.discovery_prefix}/status" if c.discovery_prefix else None
        if ha_status:
            await client.subscribe(ha_status, qos=1)
        await self._publish(client, self.status_topic, "online", retain=True)
        _LOGGER.info("MQTT connected to %s:%d as %s; announcements on %s", c.host, c.port, c.client_id,
                     self.say_topic)
        self._client = client
        try:
            await _until_one_fails(self._other_messages(client, ha_status), self._publish_results(client))
        finally:
            self._client = None

    async def _other_messages(self, client: aiomqtt.Client, ha_status: str | None) -> None:
        """What is not an announcement (those are taken on arrival): Home Assistant's birth message."""
        async for message in client.messages:
            if ha_status and message.topic.matches(ha_status) and message.payload in (b"online", "online"):
                _LOGGER.debug("Home Assistant (re)started: discovery published again")
                await self._publish_discovery(client)

    async def _publish(self, client: aiomqtt.Client, topic: str, payload: str, retain: bool = False) -> None:
        await client.publish(topic, payload, qos=1, retain=retain)

    async def _set_state(self, state: str) -> None:
        """Publish busy / idle if connected (the next session publishes the state anyway)."""
        self._state = state
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._publish(self._client, self.state_topic, state, retain=True),
                                       self.state_timeout_s)

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

    # ----------------------------------------------------------------------------- receiving and results
    def _on_arrival(self, message: aiomqtt.Message) -> bool:
        """Take an announcement into the spool and the queue (or answer it at once); runs inside paho's message
        callback, before the PUBACK. Never raises. False: not an announcement, for the session's loop."""
        try:
            if not message.topic.matches(self.say_topic):
                return False
            if message.retain:
                _LOGGER.warning("ignoring a retained message on %s (publish announcements without retain)",
                                self.say_topic)
                return True
            key = self._message_key(message)
            if key is not None and key in self._recent_keys:
                _LOGGER.debug("MQTT: message %d delivered again (already taken)", message.mid)
                return True
            if key is not None:
                self._recent_keys[key] = None
                while len(self._recent_keys) > self.recent_keys_kept:
                    self._recent_keys.popitem(last=False)
            self._accept(message.payload, key)
        except Exception:
            _LOGGER.exception("MQTT: a message could not be taken")
        return True

    def _message_key(self, message: aiomqtt.Message) -> str | None:
        """Packet id and payload digest of a QoS 1/2 message (QoS 0 is never delivered again)."""
        if not message.qos:
            return None
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        return f"{message.mid}:{hashlib.sha256(payload).hexdigest()}"

    def _accept(self, payload: Any, key: str | None = None) -> None:
        received = time.time()
        if payload is None:
            payload = b""
        elif isinstance(payload, (int, float)):
            payload = str(payload)
        try:
            ann = Announcement.parse(payload, self.settings.max_text_chars)
        except AnnouncementError as e:
            self._answer_now(received, _failure(e.id, str(e)), key)
            return
        ann = replace(ann, id=ann.id or new_id())  # an id now, so that a replay after a restart keeps it
        if self._open >= self.config.queue_size:
            if not self._overflowing:
                _LOGGER.warning("MQTT: %d announcements are waiting: new ones are answered 'queue full'",
                                self._open)
            self._overflowing += 1
            self._answer_now(received, _failure(ann.id, f"queue full ({self._open} announcements waiting)"), key)
            return
        if self._overflowing:
            _LOGGER.info("MQTT: the queue takes announcements again (%d answered 'queue full')", self._overflowing)
            self._overflowing = 0
        entry = self._spool_add(received, announcement=ann.to_record(), message_key=key)
        self._open += 1
        self._waiting.put_nowait(entry)
        _LOGGER.debug("announcement %s queued (%d waiting)", ann.id, self._open)

    def _answer_now(self, received: float, result: dict[str, Any], key: str | None) -> None:
        if not result["error"].startswith("queue full"):
            _LOGGER.warning("announcement %s failed: %s", result["id"], result["error"])
        self._post_result(self._spool_add(received, result=result, message_key=key))

    def _spool_add(self, received: float, **content: Any) -> SpoolEntry:
        if self._spool is None:
            return SpoolEntry(-1, received, **content)
        return self._spool.add(received, **content)

    def _post_result(self, entry: SpoolEntry) -> None:
        self._outbox.append(entry)
        self._outbox_ready.set()

    async def _publish_results(self, client: aiomqtt.Client) -> None:
        """Publish the results in order, each removed from the spool once the broker acknowledged it."""
        while True:
            await self._outbox_ready.wait()
            while self._outbox:
                entry = self._outbox[0]
                await self._publish(client, self.result_topic, json.dumps(entry.result))
                _LOGGER.debug("result %s published", entry.result["id"])
                self._outbox.popleft()
                if self._spool is not None:  # (in a thread: an unlink can take milliseconds)
                    await asyncio.to_thread(self._spool.remove, entry)
            self._outbox_ready.clear()

    # --------------------------------------------------------------------------------- announcements
    async def _speak_all(self) -> None:
        """The queue's one consumer: speaks (or ages out) each announcement in arrival order."""
        while True:
            entry = await self._waiting.get()
            t0 = time.perf_counter()
            try:
                result = await self._speak(entry)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # e.g. a spool entry of another version: its error, not the bridge's end
                _LOGGER.exception("announcement of spool entry %d failed", entry.seq)
                result = _failure((entry.announcement or {}).get("id"), f"internal error: {e!r}")
            if result["ok"]:
                _LOGGER.info("announcement %s: %.2f s of audio to %s in %.2f s", result["id"], result["duration_s"],
                             " and ".join(str(result[k]) for k in ("target", "path") if k in result),
                             time.perf_counter() - t0)
            else:
                _LOGGER.warning("announcement %s failed: %s", result["id"], result["error"])
            if self._spool is not None:
                await asyncio.to_thread(self._spool.finish, entry, result)
            else:
                entry.result = result
            self._open -= 1
            self._post_result(entry)

    async def _speak(self, entry: SpoolEntry) -> dict[str, Any]:
        ann = Announcement.from_record(entry.announcement or {})
        # from publishing where the payload says when (a clock ahead of ours counts as just sent), else from arrival
        since, what = (entry.received, "received") if ann.time is None else (min(ann.time, entry.received), "published")
        age = time.time() - since
        if age > self.config.max_age_s:
            return _failure(ann.id, f"expired: {what} {age:.0f} s ago (limit {self.config.max_age_s:g} s)")
        await self._set_state("busy")
        try:
            return await self._deliver(ann)
        finally:
            await self._set_state("idle")

    def _resolve_target(self, target: str | None) -> tuple[str, str] | None:
        c = self.config
        if target is DEFAULT_TARGET:
            target = c.default_target
        if target is None or target.strip() == "":
            return None
        if target in c.targets:
            return target, c.targets[target]
        if target.lower() == "none":
            return None
        names = ", ".join(c.targets) or "none"
        if target.startswith("tcp://"):
            if not c.allow_uri:
                raise ValueError(f"unknown target {target!r}: only the configured targets may be used ({names})")
            tcp_address(target)  # ValueError for a malformed one
            return target, target
        raise ValueError(f"unknown target {target!r}; targets: {names}"
                         + (" (or a tcp://host:port URI)" if c.allow_uri else ""))

    async def _deliver(self, ann: Announcement) -> dict[str, Any]:
        """Synthesize one announcement and deliver it; the result message (never raises for bad input)."""
        req_id = ann.id or new_id()
        samples = 0
        sink: Sink | None = None
        wav: WavFile | None = None
        c = self.config
        try:
            segments = prepare(ann.text, None, self.settings.max_text_chars)
            voice = voice_request(self.voices, self.model_languages, ann.voice, ann.language,
                                  self.settings.default_voice, self.settings.default_language)
            target = self._resolve_target(ann.target)
            if target is None and c.announce_dir is None:
                raise ValueError("nowhere to deliver: no target given, no --announce-default and no --announce-dir")
            if target is not None:
                sink = Sink(*target, connect_timeout=self.connect_timeout_s, write_timeout=self.write_timeout_s)
                await sink.open()
            if c.announce_dir is not None:
                wav = WavFile(c.announce_dir, req_id, self.sample_rate)
            rate = self.sample_rate
            if sink:
                await sink.send(audio_start(rate))
            _LOGGER.debug("announcement %s: %r with %s", req_id, ann.text, voice)
            for segment in segments:  # plain text: sentences only, no pauses
                chunks = self.worker.stream(self.settings.request(segment.text, voice))
                try:
                    async for pcm in chunks:
                        audio = pcm16(pcm)
                        if wav:
                            wav.write(audio.tobytes())
                        for chunk in audio_chunks(audio, rate, self.settings.samples_per_chunk, samples):
                            if sink:
                                await sink.send(chunk.event())
                            samples += chunk.samples
                finally:
                    await chunks.aclose()
            if sink:
                await sink.send(audio_stop(samples, rate))
            result: dict[str, Any] = {"id": req_id, "ok": True}
            if wav:
                result["path"] = str(wav.commit().resolve())
                c.retention.prune(c.announce_dir)
            if sink:
                result["target"] = sink.name
                result["played"] = await sink.wait_played(min(samples / rate + self.played_slack_s,
                                                              self.played_max_s))
                if not result["played"]:
                    result.update(ok=False, error=sink.not_played_error())
        except (ValueError, DeliveryError) as e:
            return _failure(req_id, str(e), samples / self.sample_rate)
        except Exception as e:  # an engine failure: report it, keep serving
            _LOGGER.exception("announcement %s failed", req_id)
            return _failure(req_id, f"internal error: {e!r}", samples / self.sample_rate)
        finally:
            if wav:
                wav.discard()
            if sink:
                await sink.close()
        result["duration_s"] = round(samples / self.sample_rate, 3)
        return result


def _failure(req_id: str | None, error: str, duration_s: float = 0.0) -> dict[str, Any]:
    return {"id": req_id or new_id(), "ok": False, "error": error, "duration_s": round(duration_s, 3)}


async def stop_bridge(task: asyncio.Task[None]) -> None:
    """Cancel the bridge's task and wait (bounded) for its goodbye on ``<prefix>/status``."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError, Exception):
        await asyncio.wait_for(task, 5.0)
