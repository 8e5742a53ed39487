"""MQTT announcements, end to end: a real broker (mosquitto), the real server process with the tiny model and its
MQTT bridge, a real Wyoming audio sink (wyoming's AsyncTcpServer) and an aiomqtt test client.

The module's tests share one broker and one server and run in file order: the broker restart and the shutdown
come last."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import time
import wave
from functools import partial
from pathlib import Path

import aiomqtt
import numpy as np
import pytest
import pytest_asyncio
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.server import AsyncEventHandler, AsyncTcpServer
from wyoming.snd import Played
from wyoming.tts import Synthesize

from wyoming_qwen3tts import __version__
from wyoming_qwen3tts.mqtt_delivery import DEFAULT_TARGET, Announcement, AnnouncementError, DeliveryError
from wyoming_qwen3tts.mqtt_delivery import Sink as SinkClient

from helpers import (EVENT_TIMEOUT, MQTT_MAX_FRAMES, MQTT_PREFIX, SPF, Broker, free_port, mqtt_client, next_message,
                     start_mqtt_server, stop_process, wait_retained)


@pytest.fixture(scope="module")
def sink_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def dead_port() -> int:
    return free_port()  # nothing listens there


@pytest.fixture(scope="module")
def server(tiny_gguf, broker, sink_port, dead_port, tmp_path_factory):
    """The server of most tests; yields (wyoming uri, announce dir, process, log)."""
    workdir = tmp_path_factory.mktemp("server")
    announce_dir = workdir / "announcements"
    uri, proc, log = start_mqtt_server(tiny_gguf("tiny-17", "f32"), workdir, broker.port,
                                       "--announce-target", f"kitchen=tcp://127.0.0.1:{sink_port}",
                                       "--announce-target", f"attic=tcp://127.0.0.1:{dead_port}",
                                       "--announce-default", "kitchen", "--announce-dir", str(announce_dir))
    yield uri, announce_dir, proc, log
    stop_process(proc)


async def announce(client: aiomqtt.Client, payload: str | bytes, req_id: str | None = None) -> dict:
    """Publish on <prefix>/say, return the result (the one with this id, or the next one)."""
    await client.publish(f"{MQTT_PREFIX}/say", payload, qos=1)
    message = await next_message(client, f"{MQTT_PREFIX}/result",
                                 lambda m: req_id is None or json.loads(m.payload).get("id") == req_id)
    return json.loads(message.payload)


# ------------------------------------------------------------------------------------------------- the sink
class Sink:
    """Records what Wyoming audio sinks receive, one list of events per connection."""

    def __init__(self) -> None:
        self.connections: list[list[Event]] = []
        self.stopped = asyncio.Event()

    def streams(self) -> list[list[Event]]:
        return [c for c in self.connections if c]


class RecordingHandler(AsyncEventHandler):
    def __init__(self, sink: Sink, reader, writer) -> None:
        super().__init__(reader, writer)
        self.sink = sink
        self.events: list[Event] = []
        sink.connections.append(self.events)

    async def handle_event(self, event: Event) -> bool:
        self.events.append(event)
        if AudioStop.is_type(event.type):
            await self.write_event(Played().event())  # as wyoming-satellite's sound services do
            self.sink.stopped.set()
        return True


@pytest_asyncio.fixture
async def sink(sink_port):
    recorder = Sink()
    server = AsyncTcpServer("127.0.0.1", sink_port)
    await server.start(partial(RecordingHandler, recorder))
    yield recorder
    await server.stop()


def check_stream(events: list[Event]) -> np.ndarray:
    """The audio of one sink connection: audio-start, audio-chunk..., audio-stop at 24 kHz 16-bit mono."""
    types = [e.type for e in events]
    assert types[0] == "audio-start" and types[-1] == "audio-stop" and set(types[1:-1]) == {"audio-chunk"}, types
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    chunks = [AudioChunk.from_event(e) for e in events[1:-1]]
    assert all((c.rate, c.width, c.channels) == (24000, 2, 1) for c in chunks)
    stamps = [c.timestamp for c in chunks]
    assert stamps[0] == 0 and stamps == sorted(stamps)
    return np.frombuffer(b"".join(c.audio for c in chunks), dtype="<i2")


def read_wav(path: str) -> np.ndarray:
    with wave.open(path, "rb") as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (24000, 2, 1)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


# --------------------------------------------------------------------------------------- the payload parser
def test_announcement_parser():
    assert Announcement.parse(b"The washing machine is done.", 100) == Announcement(text="The washing machine is done.")
    a = Announcement.parse('{"text": "Hi.", "voice": "dylan", "language": "de", "target": "kitchen", "id": 7}', 100)
    assert (a.text, a.voice, a.language, a.target, a.id) == ("Hi.", "dylan", "de", "kitchen", "7")
    assert Announcement.parse('{"text": "Hi."}', 100).target is DEFAULT_TARGET
    assert Announcement.parse('{"text": "Hi.", "target": null}', 100).target is None
    for payload, message in [(b"\xff\xfe", "not UTF-8"), (b"{oops", "not valid JSON"), (b"{}", "no 'text'"),
                             (b'{"text": 5}', "must be a string"), (b'{"text": "x", "id": [1]}', "'id' must be"),
                             (b"x" * 101, "too long"), (b"x" * 10_000, "too long")]:
        with pytest.raises(AnnouncementError, match=message):
            Announcement.parse(payload, 100)
    with pytest.raises(AnnouncementError) as e:
        Announcement.parse('{"id": "a1", "text": "x", "voice": 3}', 100)
    assert e.value.id == "a1"
    assert Announcement.parse('{"text": "x", "time": 1764931200.5}', 100).time == 1764931200.5
    for bad in ('"yesterday"', "true", "[1]"):
        with pytest.raises(AnnouncementError, match="'time' must be Unix seconds"):
            Announcement.parse(f'{{"text": "x", "time": {bad}}}', 100)


# --------------------------------------------------------------------------------------- discovery and status
async def test_discovery_status_and_state_are_retained(server, broker):
    async with mqtt_client(broker.port, "homeassistant/#", f"{MQTT_PREFIX}/status", f"{MQTT_PREFIX}/state") as client:
        got: dict[str, aiomqtt.Message] = {}

        async def collect():
            async for m in client.messages:
                got[str(m.topic)] = m
                if len(got) == 5:
                    return

        await asyncio.wait_for(collect(), 10)
    assert got[f"{MQTT_PREFIX}/status"].payload == b"online" and got[f"{MQTT_PREFIX}/status"].retain
    assert got[f"{MQTT_PREFIX}/state"].payload == b"idle" and got[f"{MQTT_PREFIX}/state"].retain
    configs = {topic: json.loads(m.payload) for topic, m in got.items() if topic.startswith("homeassistant/")}
    assert all(got[t].retain for t in configs)
    notify = configs["homeassistant/notify/qwen3tts/announce/config"]
    sensor = configs["homeassistant/sensor/qwen3tts/state/config"]
    status = configs["homeassistant/binary_sensor/qwen3tts/status/config"]
    assert notify["command_topic"] == f"{MQTT_PREFIX}/say" and notify["unique_id"] == "qwen3tts_announce"
    assert sensor["state_topic"] == f"{MQTT_PREFIX}/state" and set(sensor["options"]) == {"idle", "busy"}
    assert status["state_topic"] == f"{MQTT_PREFIX}/status" and status["device_class"] == "connectivity"
    for config in (notify, sensor):
        assert config["availability_topic"] == f"{MQTT_PREFIX}/status"
        assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
    unique_ids = {c["unique_id"] for c in configs.values()}
    assert len(unique_ids) == 3
    for config in configs.values():
        device = config["device"]
        assert device["identifiers"] == notify["device"]["identifiers"] and device["name"]
        assert device["manufacturer"] == "Qwen3-TTS on ggml" and device["sw_version"] == __version__


# -------------------------------------------------------------------------------------------- announcements
async def test_plain_text_goes_to_the_default_target_and_a_wav_file(server, broker, sink):
    _, announce_dir, _, _ = server
    async with mqtt_client(broker.port, f"{MQTT_PREFIX}/state") as watcher, \
            mqtt_client(broker.port, f"{MQTT_PREFIX}/result") as client:
        result = await announce(client, "The washing machine is done.")
        states = []
        with contextlib.suppress(AssertionError):
            while states[-2:] != [b"busy", b"idle"]:
                states.append((await next_message(watcher, f"{MQTT_PREFIX}/state", timeout=2)).payload)
    assert result["ok"] is True, result
    assert result["id"] and result["target"] == "kitchen"
    assert states[-2:] == [b"busy", b"idle"], states
    path = Path(result["path"])
    assert path.parent == announce_dir.resolve() and path.suffix == ".wav"
    assert not [p for p in announce_dir.iterdir() if p.name.startswith(".")]  # no temporary file left
    wav = read_wav(str(path))
    await asyncio.wait_for(sink.stopped.wait(), 5)
    (stream,) = sink.streams()
    sent = check_stream(stream)
    assert 0 < sent.size <= MQTT_MAX_FRAMES * SPF and sent.size % SPF == 0  # one sentence, at most --max-frames
    assert np.array_equal(sent, wav)
    assert result["duration_s"] == pytest.approx(sent.size / 24000, abs=1e-3)


async def test_json_announcement_with_voice_language_target_and_id(server, broker, sink, sink_port):
    async with mqtt_client(broker.port, f"{MQTT_PREFIX}/result") as client:
        a = await announce(client, json.dumps({"text": "Die Tür ist offen.", "voice": "dylan", "language": "de",
                                               "target": "kitchen", "id": "door-1"}), "door-1")
        assert a["ok"] is True and a["id"] == "door-1" and a["target"] == "kitchen" and a["played"] is True, a
        assert re.fullmatch(r"\d{8}-\d{6}_door-1\.wav", Path(a["path"]).name), a["path"]
        # a tcp:// URI instead of a name: refused without --announce-allow-uri, even for the sink's own address
        b = await announce(client, json.dumps({"text": "Hello.", "target": f"tcp://127.0.0.1:{sink_port}",
                                               "id": "uri-1"}), "uri-1")
        assert b["ok"] is False and "only the configured targets may be used (kitchen, attic)" in b["error"], b
        # target null: the file only
        c = await announce(client, json.dumps({"text": "Just a file.", "target": None, "id": "file-1"}), "file-1")
        assert c["ok"] is True and "target" not in c and read_wav(c["path"]).size > 0, c
    (stream,) = sink.streams()  # the refused URI never got a connection
    check_stream(stream)


async def test_the_age_limit_counts_from_the_publish_time_the_payload_gives(server, broker, sink):
    # The server's --announce-max-age is the default 600 s: an announcement published an hour ago (e.g. held by
    # the broker while the server was down) has expired; one published a second ago is spoken.
    async with mqtt_client(broker.port, f"{MQTT_PREFIX}/result") as client:
        old = await announce(client, json.dumps({"text": "Too late.", "id": "old-1", "time": time.time() - 3600}),
                             "old-1")
        assert old["ok"] is False and re.match(r"expired: published 36\d\d s ago", old["error"]), old
        fresh = await announce(client, json.dumps({"text": "In time.", "id": "new-1", "time": time.time() - 1}),
                               "new-1")
        assert fresh["ok"] is True, fresh
    (stream,) = sink.streams()  # only the fresh one was played
    check_stream(stream)


async def test_wyoming_clients_and_announcements_share_the_engine(server, broker, sink):
    uri = server[0]
    async with mqtt_client(broker.port, f"{MQTT_PREFIX}/result") as client, AsyncTcpClient.from_uri(uri) as wyoming:
        await wyoming.write_event(Synthesize(text="One. Two. Three.").event())
        result = asyncio.ensure_future(announce(client, json.dumps({"text": "Meanwhile.", "id": "m-1"}), "m-1"))
        types = []
        while not types or types[-1] != "audio-stop":
            types.append((await asyncio.wait_for(wyoming.read_event(), EVENT_TIMEOUT)).type)
        assert (await result)["ok"] is True


async def test_bad_announcements_get_error_results_and_the_bridge_keeps_going(server, broker, sink):
    cases = [
        (b"\xff\xfe\x00 not text", None, "not UTF-8"),
        (b'{"text": "Hi.", "id": ', None, "not valid JSON"),
        (json.dumps({"text": "Hi.", "voice": "nobody", "id": "e-voice"}), "e-voice", "unknown voice 'nobody'"),
        (json.dumps({"text": "Hi.", "language": "tlh", "id": "e-lang"}), "e-lang", "unknown language"),
        (json.dumps({"text": "Hi.", "target": "garage", "id": "e-target"}), "e-target", "unknown target 'garage'"),
        (json.dumps({"text": "Hi.", "target": "attic", "id": "e-down"}), "e-down", "attic"),
        (json.dumps({"text": "a" * 10_001, "id": "e-long"}), "e-long", "too long"),
        ("a" * 10_001, None, "too long"),
        ("   ", None, "empty"),
    ]
    async with mqtt_client(broker.port, f"{MQTT_PREFIX}/result") as client:
        for payload, req_id, message in cases:
            t0 = time.monotonic()
            result = await announce(client, payload, req_id)
            assert result["ok"] is False and message in result["error"], (payload[:40], result)
            assert result["id"] == (req_id or result["id"]) and "duration_s" in result
            assert time.monotonic() - t0 < 10  # a target that is down fails fast
        assert await announce(client, json.dumps({"text": "Still here.", "id": "ok-1"}), "ok-1")
    assert len(sink.streams()) == 1  # only the last one reached the sink


# ------------------------------------------------------------------------------------- broker trouble, exit
async def test_broker_restart_reconnects_and_publishes_discovery_again(server, broker, sink):
    broker.kill()
    broker.start()  # same port, no persistence: retained messages are gone until the bridge publishes them again
    await wait_retained(broker.port, f"{MQTT_PREFIX}/status", b"online", timeout=20)
    async with mqtt_client(broker.port, "homeassistant/#", f"{MQTT_PREFIX}/result") as client:
        config = await next_message(client, "homeassistant/notify/+/+/config", timeout=10)
        assert config.retain and json.loads(config.payload)["command_topic"] == f"{MQTT_PREFIX}/say"
        result = await announce(client, json.dumps({"text": "Back again.", "id": "after-restart"}), "after-restart")
    assert result["ok"] is True, result
    await asyncio.wait_for(sink.stopped.wait(), 5)
    check_stream(sink.streams()[-1])
    log = server[3].read_text(errors="replace")
    assert "MQTT connection to 127.0.0.1" in log and "lost" in log


async def test_shutdown_publishes_offline(server, broker):
    _, _, proc, log = server
    stop_process(proc)
    await wait_retained(broker.port, f"{MQTT_PREFIX}/status", b"offline", timeout=10)
    assert "Traceback" not in log.read_text(errors="replace")


def test_a_broker_that_is_down_at_start_is_retried(tiny_gguf, tmp_path):
    late = Broker(tmp_path)  # not started yet
    _, proc, log = start_mqtt_server(tiny_gguf("tiny-17", "f32"), tmp_path, late.port, "--announce-dir",
                                     str(tmp_path / "out"), wait_online=False)
    try:
        time.sleep(1.5)
        assert proc.poll() is None and "unreachable" in log.read_text(errors="replace")
        late.start()
        asyncio.run(wait_retained(late.port, f"{MQTT_PREFIX}/status", b"online", timeout=10))  # backoff: 1 s, 2 s, ...
    finally:
        stop_process(proc)
        late.kill()


def test_a_killed_server_leaves_its_last_will(tiny_gguf, broker, tmp_path):
    prefix = "will-test"  # its own topics: independent of the module's server
    _, proc, _ = start_mqtt_server(tiny_gguf("tiny-17", "f32"), tmp_path, broker.port, "--mqtt-topic-prefix",
                                   prefix, "--announce-dir", str(tmp_path / "out"), prefix=prefix)
    stop_process(proc, signal.SIGKILL)  # no goodbye: the broker publishes the will
    asyncio.run(wait_retained(broker.port, f"{prefix}/status", b"offline", timeout=10))


async def test_a_sink_that_hangs_is_given_up_after_a_bounded_time():
    # A listener that never accepts, its backlog full: further connection attempts get no answer at all.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    uri = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(listener.getsockname())
            fillers.append(s)
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        with pytest.raises(DeliveryError, match="^target hung unreachable$"):
            await SinkClient("hung", uri, connect_timeout=0.5, write_timeout=0.5).open()
        assert time.monotonic() - t0 < 3
    finally:
        for s in fillers:
            s.close()
        listener.close()

    # A sink that accepts but never reads: the writes stop after the write timeout.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink = SinkClient("deaf", f"tcp://127.0.0.1:{port}", connect_timeout=0.5, write_timeout=0.5)
    await sink.open()
    chunk = AudioChunk(rate=24000, width=2, channels=1, audio=bytes(1 << 20)).event()
    t0 = time.monotonic()
    try:
        with pytest.raises(DeliveryError, match="^target deaf unreachable$"):
            for _ in range(1000):
                await sink.send(chunk)
        assert time.monotonic() - t0 < 10
    finally:
        await sink.close()
        server.close()


# ----------------------------------------------------------------------------------------- TLS and a login
def make_tls_broker(workdir: Path) -> tuple[Broker, Path]:
    """mosquitto with TLS (a throw-away CA and a certificate for 127.0.0.1) and a password file."""
    def run(*cmd: str) -> None:
        subprocess.run(cmd, cwd=workdir, check=True, capture_output=True)

    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
        "-out", "server.csr")
    (workdir / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    run(passwd, "-c", "-b", str(workdir / "passwd"), "announcer", "s3cret")
    broker = Broker(workdir)
    # `user root`: as root, mosquitto would drop to its own user, which cannot read pytest's private tmp dirs.
    broker.conf.write_text(f"user root\nlistener {broker.port} 127.0.0.1\npersistence false\nlog_dest stderr\n"
                           f"allow_anonymous false\npassword_file {workdir / 'passwd'}\n"
                           f"cafile {workdir / 'ca.pem'}\ncertfile {workdir / 'server.pem'}\n"
                           f"keyfile {workdir / 'server.key'}\n")
    return broker, workdir / "ca.pem"


async def test_tls_broker_with_a_login(tiny_gguf, tmp_path):
    broker, ca = make_tls_broker(tmp_path)
    broker.start()
    (tmp_path / "password").write_text("s3cret\n")
    _, proc, log = start_mqtt_server(tiny_gguf("tiny-17", "f32"), tmp_path, broker.port, "--mqtt-tls",
                                     "--mqtt-ca-file", str(ca), "--mqtt-username", "announcer", "--mqtt-password-file",
                                     str(tmp_path / "password"), "--announce-dir", str(tmp_path / "out"),
                                     wait_online=False)
    try:
        tls = aiomqtt.TLSParameters(ca_certs=str(ca))
        async with aiomqtt.Client("127.0.0.1", broker.port, username="announcer", password="s3cret",
                                  tls_params=tls, timeout=10) as client:
            await client.subscribe(f"{MQTT_PREFIX}/status", qos=1)
            await client.subscribe(f"{MQTT_PREFIX}/result", qos=1)
            await next_message(client, f"{MQTT_PREFIX}/status", lambda m: m.payload == b"online")
            await client.publish(f"{MQTT_PREFIX}/say", json.dumps({"text": "Hello.", "target": None, "id": "tls-1"}),
                                 qos=1)
            result = json.loads((await next_message(client, f"{MQTT_PREFIX}/result")).payload)
        assert result["ok"] and result["id"] == "tls-1", result
        assert read_wav(result["path"]).size == MQTT_MAX_FRAMES * SPF
    finally:
        stop_process(proc)
        broker.kill()
