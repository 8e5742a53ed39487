"""MQTT announcements that are never lost, and a bridge that no message takes down (issue 18), end to end: a real
mosquitto (persistent, restartable), the real server process with the tiny model, real Wyoming sinks on loopback.

Every test checks that each announcement gets exactly one result: across a broker restart, a server killed with
announcements queued, a burst beyond the queue bound, and hostile payloads and sinks."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import aiomqtt
import pytest
from wyoming.audio import AudioStop
from wyoming.event import Event
from wyoming.server import AsyncEventHandler, AsyncTcpServer
from wyoming.snd import Played

from wyoming_qwen3tts.mqtt_delivery import Sink as SinkClient

from helpers import MQTT_PREFIX, Broker, free_port, start_mqtt_server, stop_process, wait_retained

TIMEOUT = 60


# ---------------------------------------------------------------------------------------------- the broker
class PersistentBroker(Broker):
    """mosquitto that keeps sessions and queued messages across a SIGKILL (saved after every change), as Home
    Assistant's Mosquitto add-on keeps them across restarts."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        # `user root`: as root, mosquitto would drop to its own user, which cannot write pytest's tmp dirs
        self.conf.write_text(f"user root\nlistener {self.port} 127.0.0.1\nallow_anonymous true\n"
                             f"persistence true\npersistence_location {workdir}/\nautosave_interval 1\n"
                             "autosave_on_changes true\nlog_dest stderr\n")


@pytest.fixture
def persistent_broker(tmp_path):
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = PersistentBroker(workdir)
    b.start()
    yield b
    b.kill()


# ------------------------------------------------------------------------------------------------ results
class Results:
    """Collects <prefix>/result messages over a persistent session that survives broker restarts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.by_id: dict[str, list[dict]] = collections.defaultdict(list)
        self.connected = asyncio.Event()
        self._identifier = f"test-results-{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Results:
        self._task = asyncio.create_task(self._collect())
        await asyncio.wait_for(self.connected.wait(), 10)
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _collect(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier=self._identifier,
                                          clean_session=False, timeout=5) as client:
                    await client.subscribe(f"{MQTT_PREFIX}/result", qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        result = json.loads(message.payload)
                        self.by_id[result["id"]].append(result)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    async def wait_for(self, ids, timeout: float = TIMEOUT, *logs: Path) -> dict[str, dict]:
        """The result of each id; fails on a missing one, and on a repeated one unless LOGS (the server logs)
        are given: then the bridge must have published each result once (the log says so) and a repetition
        must be identical (a QoS 1 redelivery by the broker, which MQTT allows)."""
        deadline = time.monotonic() + timeout
        while not all(i in self.by_id for i in ids):
            if time.monotonic() > deadline:
                missing = [i for i in ids if i not in self.by_id]
                raise AssertionError(f"{len(missing)} of {len(ids)} announcements got no result: {missing[:10]}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a second result would arrive now
        if logs:
            text = "".join(log.read_text(errors="replace") for log in logs)
            published = collections.Counter(re.findall(r"result (\S+) published", text))
            assert all(published[i] == 1 for i in ids), {i: published[i] for i in ids if published[i] != 1}
            repeated = {i: self.by_id[i] for i in ids if any(r != self.by_id[i][0] for r in self.by_id[i])}
        else:
            repeated = {i: len(self.by_id[i]) for i in ids if len(self.by_id[i]) != 1}
        assert not repeated, f"results repeated: {repeated}"
        return {i: self.by_id[i][0] for i in ids}


@contextlib.asynccontextmanager
async def publisher(port: int):
    async with aiomqtt.Client("127.0.0.1", port, timeout=10) as client:
        yield client


async def say(client: aiomqtt.Client, req_id: str, text: str = "Hi.", **fields) -> None:
    await client.publish(f"{MQTT_PREFIX}/say", json.dumps({"text": text, "id": req_id, **fields}), qos=1)


async def wait_logged(log: Path, ids, what: str = "queued", timeout: float = TIMEOUT) -> None:
    """Until the server's --debug log says each announcement was taken into the queue (spooled)."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace")
        missing = [i for i in ids if f"announcement {i} {what}" not in text]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout} s: {missing[:10]}")
        await asyncio.sleep(0.1)


async def start(model: Path, workdir: Path, broker_port: int, *args: str) -> tuple[subprocess.Popen, Path]:
    """The server (started in a thread: the test's sinks and clients keep running), once it is online."""
    _, proc, log = await asyncio.to_thread(start_mqtt_server, model, workdir, broker_port, *args, wait_online=False)
    await wait_retained(broker_port, f"{MQTT_PREFIX}/status", b"online")
    return proc, log


def spooled(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob("mqtt-spool/*/*.json"))


# ------------------------------------------------------------------------------------------------- sinks
class HoldingSink:
    """A Wyoming sink that answers `played` only when released (or after hold_s): it keeps the bridge busy."""

    def __init__(self, hold_s: float = 4.0) -> None:
        self.hold_s = hold_s
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.streams = 0
        self.port = free_port()
        self._server = AsyncTcpServer("127.0.0.1", self.port)

    async def __aenter__(self) -> HoldingSink:
        await self._server.start(partial(_HoldingHandler, self))
        return self

    async def __aexit__(self, *exc) -> None:
        await self._server.stop()


class _HoldingHandler(AsyncEventHandler):
    def __init__(self, sink: HoldingSink, reader, writer) -> None:
        super().__init__(reader, writer)
        self.sink = sink

    async def handle_event(self, event: Event) -> bool:
        if event.type == "audio-start":
            self.sink.streams += 1
            self.sink.started.set()
        if AudioStop.is_type(event.type):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.sink.release.wait(), self.sink.hold_s)
            await self.write_event(Played().event())
        return True


def server_args(sink: HoldingSink, out: Path, *extra: str) -> list[str]:
    return ["--announce-target", f"slow=tcp://127.0.0.1:{sink.port}", "--announce-dir", str(out), *extra]


# ---------------------------------------------------------------------------------------------- durability
async def test_broker_killed_and_restarted_with_announcements_queued(tiny_gguf, persistent_broker, tmp_path):
    broker = persistent_broker
    async with HoldingSink(hold_s=4.0) as sink, Results(broker.port) as results:
        proc, log = await start(tiny_gguf("tiny-17", "f32"), tmp_path, broker.port,
                                    *server_args(sink, tmp_path / "out"))
        try:
            queued = [f"q{n}" for n in range(19)]
            async with publisher(broker.port) as client:
                await say(client, "hold", target="slow")
                await asyncio.wait_for(sink.started.wait(), 30)  # the bridge is busy with "hold" now
                for req_id in queued:
                    await say(client, req_id, target=None)
            await wait_logged(log, queued)
            broker.kill()  # SIGKILL: 20 announcements received and acknowledged, none answered
            await asyncio.sleep(1.0)
            broker.start()
            after = [f"p{n}" for n in range(5)]
            async with publisher(broker.port) as client:  # most likely before the bridge is back
                for req_id in after:
                    await say(client, req_id, target=None)
            got = await results.wait_for(["hold", *queued, *after], TIMEOUT, log)
        finally:
            stop_process(proc)
    assert all(r["ok"] for r in got.values()), [r for r in got.values() if not r["ok"]]
    assert got["hold"]["played"] is True and sink.streams == 1
    assert not spooled(tmp_path)
    text = log.read_text(errors="replace")
    assert "MQTT connection to 127.0.0.1" in text and "lost" in text  # the restart really cut the session


async def test_server_killed_with_announcements_queued_and_started_again(tiny_gguf, persistent_broker, tmp_path):
    broker = persistent_broker
    model = tiny_gguf("tiny-17", "f32")
    async with HoldingSink(hold_s=10.0) as sink, Results(broker.port) as results:
        proc, log = await start(model, tmp_path, broker.port, *server_args(sink, tmp_path / "out"))
        queued = [f"k{n}" for n in range(8)]
        try:
            async with publisher(broker.port) as client:
                await say(client, "hold", target="slow")
                await asyncio.wait_for(sink.started.wait(), 30)
                for req_id in queued:
                    await say(client, req_id, target=None)
                await wait_logged(log, queued)
                stop_process(proc, signal.SIGKILL)
                assert len(spooled(tmp_path)) == 1 + len(queued)  # what the dead server had taken is on disk
                sink.release.set()
                down = [f"d{n}" for n in range(3)]  # published while no server runs: the broker keeps them
                for req_id in down:
                    await say(client, req_id, target=None)
            (tmp_path / "server.log").rename(tmp_path / "first-server.log")
            proc, log = await start(model, tmp_path, broker.port, *server_args(sink, tmp_path / "out"))
            got = await results.wait_for(["hold", *queued, *down], TIMEOUT, tmp_path / "first-server.log", log)
        finally:
            stop_process(proc)
    assert all(r["ok"] for r in got.values()), [r for r in got.values() if not r["ok"]]
    assert sink.streams == 2  # "hold" was being played when the server died: it is played again
    assert not spooled(tmp_path)
    assert "9 announcements from the spool: 9 to speak" in log.read_text(errors="replace")


async def test_spooled_announcements_past_the_age_limit_expire(tiny_gguf, persistent_broker, tmp_path):
    broker = persistent_broker
    model = tiny_gguf("tiny-17", "f32")
    async with HoldingSink(hold_s=10.0) as sink, Results(broker.port) as results:
        proc, log = await start(model, tmp_path, broker.port, *server_args(sink, tmp_path / "out"))
        try:
            async with publisher(broker.port) as client:
                await say(client, "hold", target="slow")
                await asyncio.wait_for(sink.started.wait(), 30)
                await say(client, "stale", target=None)
                await wait_logged(log, ["stale"])
                stop_process(proc, signal.SIGKILL)
                sink.release.set()
                await asyncio.sleep(1.5)
                (tmp_path / "server.log").rename(tmp_path / "first-server.log")
                proc, log = await start(model, tmp_path, broker.port, *server_args(sink, tmp_path / "out"),
                                            "--announce-max-age", "1")
                await say(client, "fresh", target=None)
                got = await results.wait_for(["hold", "stale", "fresh"], TIMEOUT, tmp_path / "first-server.log", log)
        finally:
            stop_process(proc)
    for req_id in ("hold", "stale"):
        assert got[req_id]["ok"] is False and got[req_id]["error"].startswith("expired"), got[req_id]
    assert got["fresh"]["ok"] is True, got["fresh"]
    assert sink.streams == 1  # the expired one was not played again


async def test_a_burst_beyond_the_queue_bound_is_answered_in_full(tiny_gguf, broker, tmp_path):
    """1,100 announcements while the bridge is busy, with room for 20: the rest are answered "queue full"."""
    bound = 20
    async with HoldingSink(hold_s=30.0) as sink, Results(broker.port) as results:
        proc, log = await start(tiny_gguf("tiny-17", "f32"), tmp_path, broker.port,
                                    *server_args(sink, tmp_path / "out", "--announce-queue-size", str(bound)))
        burst = [f"b{n}" for n in range(1100)]
        try:
            async with publisher(broker.port) as client:
                # 40 sentences (at most 0.24 s each with --max-frames 3): the bridge waits up to ~15 s for "played"
                await say(client, "hold", " ".join(f"Sentence {n}." for n in range(40)), target="slow")
                await asyncio.wait_for(sink.started.wait(), 30)
                t0 = time.monotonic()
                for first in range(0, len(burst), 100):
                    await asyncio.gather(*(say(client, i, target=None) for i in burst[first:first + 100]))
            await results.wait_for(burst[bound - 1:], timeout=TIMEOUT)  # the "queue full" answers come at once
            burst_s = time.monotonic() - t0
            sink.release.set()
            got = await results.wait_for(["hold", *burst])
        finally:
            stop_process(proc)
    full = [i for i in burst if not got[i]["ok"]]
    assert all(got[i]["error"].startswith("queue full") for i in full), {got[i]["error"] for i in full}
    # "hold" and the first bound-1 of the burst took the queue's places; the rest were answered, none dropped
    assert full == burst[bound - 1:], (len(full), full[:3])
    assert all(got[i]["ok"] for i in ["hold", *burst[:bound - 1]])
    assert "Message queue is full" not in log.read_text(errors="replace")
    print(f"1,100 announcements received and {len(full)} answered 'queue full' in {burst_s:.1f} s")


# --------------------------------------------------------------------------------------- hostile input
@pytest.fixture(scope="module")
def guarded(tiny_gguf, broker, tmp_path_factory):
    """A server with a greedy sink target, retention of 3 files, and one old file and two foreign files in its
    announce dir; yields (process, log, announce dir, greedy sink port)."""
    workdir = tmp_path_factory.mktemp("guarded")
    out = workdir / "out"
    out.mkdir()
    old = out / "20000101-000000_ancient.wav"
    old.write_bytes(b"RIFF")
    os.utime(old, (time.time() - 8 * 86400,) * 2)
    (out / "notes.txt").write_text("mine")
    (out / "20000101-000000_mine.txt").write_text("mine")
    greedy_port = free_port()
    _, proc, log = start_mqtt_server(tiny_gguf("tiny-17", "f32"), workdir, broker.port,
                                     "--announce-target", f"greedy=tcp://127.0.0.1:{greedy_port}",
                                     "--announce-dir", str(out), "--announce-keep", "3")
    yield proc, log, out, greedy_port
    stop_process(proc)


def test_retention_at_start_deletes_only_old_announcement_files(guarded):
    out = guarded[2]
    assert sorted(p.name for p in out.iterdir()) == ["20000101-000000_mine.txt", "notes.txt"]


async def test_nested_json_between_valid_announcements(guarded, broker):
    log = guarded[1]
    deep = '{"text": "x", "id": "deep", "x": ' + "[" * 20_000 + "]" * 20_000 + "}"
    assert len(deep) < 44_096  # under the payload size cap: it reaches the JSON parser
    async with Results(broker.port) as results, publisher(broker.port) as client:
        await say(client, "before", target=None)
        for _ in range(2):  # sending it again changes nothing
            await client.publish(f"{MQTT_PREFIX}/say", deep, qos=1)
        await say(client, "after", target=None)
        got = await results.wait_for(["before", "after"])
        await asyncio.sleep(0.5)
        nested = [r for rs in results.by_id.values() for r in rs if "nested too deeply" in r.get("error", "")]
    assert got["before"]["ok"] and got["after"]["ok"]
    assert len(nested) == 2 and all(r["ok"] is False for r in nested), nested
    text = log.read_text(errors="replace")
    assert "lost" not in text and "Traceback" not in text


async def test_ids_that_map_to_one_name_get_different_files(guarded, broker):
    async with Results(broker.port) as results, publisher(broker.port) as client:
        ids = ["a/b/c", "a_b_c", "a..b..c"]
        for req_id in ids:
            await say(client, req_id, target=None)
        got = await results.wait_for(ids)
    paths = [Path(got[i]["path"]) for i in ids]
    assert len(set(paths)) == 3 and all(p.is_file() for p in paths), paths
    assert all(re.fullmatch(r"\d{8}-\d{6}_a_b_c(-\d+)?\.wav", p.name) for p in paths), paths


async def test_retention_keeps_the_newest_files(guarded, broker):
    out = guarded[2]
    async with Results(broker.port) as results, publisher(broker.port) as client:
        ids = [f"keep{n}" for n in range(5)]
        for req_id in ids:
            await say(client, req_id, target=None)
        got = await results.wait_for(ids)
    wavs = sorted(p for p in out.iterdir() if p.suffix == ".wav")
    assert wavs == sorted(Path(got[i]["path"]) for i in ids[-3:])  # --announce-keep 3
    assert (out / "notes.txt").exists() and (out / "20000101-000000_mine.txt").exists()


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1])


async def test_a_sink_replying_with_an_oversized_event_is_read_under_limits(guarded, broker):
    proc, _, _, greedy_port = guarded
    sent = 0

    async def greedy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while b'"audio-stop"' not in await reader.readline():
                pass
            writer.write(json.dumps({"type": "played", "data_length": 200 << 20}).encode() + b"\n")
            block = bytes(1 << 20)
            for _ in range(200):  # 200 MB, as announced, as fast as the bridge takes them
                writer.write(block)
                await asyncio.wait_for(writer.drain(), 5)
                sent += len(block)
        writer.close()

    server = await asyncio.start_server(greedy, "127.0.0.1", greedy_port)
    before = peak_rss_kib(proc.pid)
    try:
        async with Results(broker.port) as results, publisher(broker.port) as client:
            await say(client, "greedy-1", target="greedy")
            got = (await results.wait_for(["greedy-1"]))["greedy-1"]
    finally:
        server.close()
    growth_mib = (peak_rss_kib(proc.pid) - before) / 1024
    assert got["ok"] is False and got["played"] is False, got
    assert got["error"] == "target greedy did not confirm playback"
    assert growth_mib < 32, f"peak RSS grew by {growth_mib:.0f} MiB"
    assert sent < 100 << 20  # the bridge hung up instead of reading what was announced


async def test_a_sink_that_never_answers_is_not_played():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, reads and says nothing
    sink = SinkClient("deaf", f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}", connect_timeout=1,
                      write_timeout=1)
    try:
        await sink.open()
        t0 = time.monotonic()
        assert await sink.wait_played(0.5) is False
        assert time.monotonic() - t0 < 2
    finally:
        await sink.close()
        server.close()


async def test_target_uris_only_with_the_opt_in_and_errors_say_only_unreachable(tiny_gguf, broker, tmp_path):
    closed_port = free_port()

    async def hang_up(reader, writer):
        writer.close()

    async def http(reader, writer):
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    servers = [await asyncio.start_server(h, "127.0.0.1", 0) for h in (hang_up, http)]
    uris = [f"tcp://127.0.0.1:{closed_port}"] + [f"tcp://127.0.0.1:{s.sockets[0].getsockname()[1]}"
                                                 for s in servers]
    async with HoldingSink(hold_s=0) as sink:
        proc, _ = await start(tiny_gguf("tiny-17", "f32"), tmp_path, broker.port, "--announce-allow-uri",
                                  "--announce-dir", str(tmp_path / "out"))
        try:
            async with Results(broker.port) as results, publisher(broker.port) as client:
                for n, uri in enumerate([*uris, f"tcp://127.0.0.1:{sink.port}"]):
                    await say(client, f"uri{n}", target=uri)
                got = await results.wait_for([f"uri{n}" for n in range(4)])
        finally:
            stop_process(proc)
            for s in servers:
                s.close()
    assert [got[f"uri{n}"].get("error") for n in range(3)] == ["target unreachable"] * 3, got
    assert got["uri3"]["ok"] is True and got["uri3"]["played"] is True


def test_announce_options_without_mqtt_host_are_an_error(tmp_path):
    for extra in (["--announce-dir", str(tmp_path)], ["--announce-target", "k=tcp://127.0.0.1:1"],
                  ["--mqtt-topic-prefix", "x"], ["--announce-allow-uri"]):
        proc = subprocess.run([sys.executable, "-m", "wyoming_qwen3tts", "--model", str(tmp_path / "none.gguf"),
                               *extra], cwd=tmp_path, capture_output=True, text=True, timeout=60)  # not the source tree
        assert proc.returncode == 2 and "need(s) --mqtt-host" in proc.stderr and extra[0] in proc.stderr, \
            (extra, proc.stderr[-300:])
