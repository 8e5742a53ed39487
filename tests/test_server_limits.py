"""One client never stalls the others: stuck, idle and slowloris clients, too many connections, cancellation, and
an engine that fails in the middle of a stream. Real servers on loopback (the CLI in a subprocess, or the handler
in this process where a fault has to be injected into the engine) with small timeouts."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import time

import pytest
from wyoming.client import AsyncTcpClient
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

from wyoming_qwen3tts import Qwen3TTS
from wyoming_qwen3tts._native import _engine
from wyoming_qwen3tts.engine import SynthesisStats
from wyoming_qwen3tts.request import SynthesisRequest
from wyoming_qwen3tts.worker import ConsumerTooSlow, EngineWorker

from helpers import (HANG_S, SPF, HomeAssistantLike, ha_speak, inproc_server, log_text, raw_request, start_server,
                     stop_process, types)

IDLE_S = 2.0
HEADER_S = 1.0
MAX_CONNECTIONS = 4
LONG = SynthesisRequest(text="Hello there.", speaker="vivian", greedy=True, min_frames=400, max_frames=400)


@pytest.fixture(scope="module")
def server(tiny_gguf, tmp_path_factory):
    log = tmp_path_factory.mktemp("limits-server") / "server.log"
    uri, proc = start_server(tiny_gguf("tiny-17", "f32"), log, "--max-frames", "4", "--idle-timeout", str(IDLE_S),
                             "--header-timeout", str(HEADER_S), "--max-connections", str(MAX_CONNECTIONS))
    yield uri, log
    stop_process(proc)


def connect(uri: str, timeout: float = HANG_S) -> socket.socket:
    host, port = uri.removeprefix("tcp://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def headers(data: bytes) -> list[dict]:
    out = []
    while data:
        line, _, data = data.partition(b"\n")
        header = json.loads(line)
        n = header.get("data_length") or 0
        header["data"] = {**(header.get("data") or {}), **(json.loads(data[:n]) if n else {})}
        data = data[n + (header.get("payload_length") or 0):]
        out.append(header)
    return out


def describe_works(uri: str) -> bool:
    with connect(uri, timeout=10) as s:
        s.sendall(b'{"type": "describe"}\n')
        return json.loads(s.makefile("rb").readline())["type"] == "info"


# ------------------------------------------------------------------------------------ idle and slow clients
def test_an_idle_connection_is_closed_after_the_idle_timeout(server):
    uri, _ = server
    with connect(uri) as s:
        s.sendall(b'{"type": "describe"}\n')
        t0 = time.monotonic()
        replies = headers(read_to_end(s))  # info, then nothing more is asked: closed by the server
        elapsed = time.monotonic() - t0
    assert [h["type"] for h in replies] == ["info"]
    assert IDLE_S - 0.5 < elapsed < IDLE_S + 3


def test_a_slowloris_header_is_cut_off_after_the_header_timeout(server):
    uri, _ = server
    with connect(uri, timeout=0.2) as s:
        s.sendall(b'{"type": "describe"')
        t0, data = time.monotonic(), b""
        while time.monotonic() - t0 < 10:  # one byte every 0.2 s, never a newline
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                try:
                    s.send(b" ")
                except OSError:
                    break
                continue
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        elapsed = time.monotonic() - t0
    assert elapsed < HEADER_S + 3, "the server held the slowloris connection"
    assert [h["type"] for h in headers(data)] == ["error"] and "incomplete" in headers(data)[0]["data"]["text"]


def test_too_many_connections_are_refused_cleanly_and_the_refusals_are_not_logged_one_by_one(server):
    uri, log = server
    held = [connect(uri) for _ in range(MAX_CONNECTIONS)]
    try:
        assert all(s.send(b"\n") or True for s in held)
        time.sleep(0.2)  # accepted and counted (well within the idle timeout)
        refused = []
        for _ in range(60):
            with connect(uri, timeout=5) as s:
                refused.append(headers(read_to_end(s)))
    finally:
        for s in held:
            s.close()
    assert all([h["type"] for h in r] == ["error"] and "connections are open" in r[0]["data"]["text"]
               for r in refused)
    assert 1 <= log_text(log).count("refused a connection") <= 10  # rate-limited
    deadline = time.monotonic() + 10
    while not describe_works(uri):  # served again once the held ones are gone
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_thousand_idle_sockets_get_refusals_not_accept_errors(tiny_gguf, tmp_path):
    """A file descriptor limit of 1024 and 1000 idle sockets: beyond --max-connections (64) they are refused with
    an error; the server never runs out of descriptors (no accept() failures flooding the log) and serves again
    once they are gone."""
    log = tmp_path / "server.log"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("this test needs 1200 file descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))

    def server_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    uri, proc = start_server(tiny_gguf("tiny-17", "f32"), log, "--max-frames", "4", "--idle-timeout", "30",
                             preexec_fn=server_limit)
    sockets = []
    try:
        for _ in range(1000):
            sockets.append(connect(uri, timeout=5))
        time.sleep(1.0)
        refused = waiting = 0
        for s in sockets:
            s.setblocking(False)
            try:
                refused += b"too-many-connections" in s.recv(65536)
            except BlockingIOError:
                waiting += 1  # served: the server waits for its first event
        assert (waiting, refused) == (64, 936)
        for s in sockets:
            s.close()
        sockets.clear()
        deadline = time.monotonic() + 10
        while not describe_works(uri):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        for s in sockets:
            s.close()
        stop_process(proc)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    text = log_text(log)
    assert "out of system resource" not in text and "Too many open files" not in text and "Traceback" not in text
    assert text.count("refused a connection") <= 11  # rate-limited


# ---------------------------------------------------------------------------------- a stuck client beside others
async def test_a_client_that_stops_reading_does_not_stall_the_others(tiny_gguf, tmp_path):
    """Each sentence is 400 frames (32 s of audio, ~2 s of engine time); one client asks for two and reads
    nothing. Another client's first audio must come within seconds, not after the stuck client's 30 s write
    timeout."""
    uri, proc = start_server(tiny_gguf("tiny-17", "f32"), tmp_path / "server.log", "--max-frames", "400")
    try:
        stuck = connect(uri)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        stuck.sendall(json.dumps({"type": "synthesize", "data": {"text": "Hello there. How are you?"}}).encode()
                      + b"\n")
        await asyncio.sleep(0.3)  # its synthesis is under way
        async with AsyncTcpClient.from_uri(uri) as other:
            t0 = time.monotonic()
            await other.write_event(Synthesize(text="Hi.").event())
            while (await asyncio.wait_for(other.read_event(), HANG_S)).type != "audio-chunk":
                pass
            first_audio_s = time.monotonic() - t0
        stuck.close()
    finally:
        stop_process(proc)
    assert first_audio_s < 12, f"another client's first audio took {first_audio_s:.1f} s"


async def test_a_consumer_that_falls_behind_real_time_has_its_synthesis_stopped(tiny_gguf):
    worker = EngineWorker(Qwen3TTS(tiny_gguf("tiny-17", "f32"), threads=1), max_lag_s=0.3)
    stats = SynthesisStats()
    chunks = worker.stream(LONG, stats=stats)
    try:
        await chunks.__anext__()
        await asyncio.sleep(1.5)  # takes nothing more
        with pytest.raises(ConsumerTooSlow):
            async for _ in chunks:
                pass
    finally:
        await chunks.aclose()
        worker.close()
    assert stats.frames < 200  # of 400: stopped about 0.3 s after the consumer stalled


async def test_a_cancelled_synthesis_stops_within_one_frame(tiny_gguf):
    """A client that goes away closes its stream: the engine stops after the frame it is generating, not at the
    end of its chunk (8 frames here)."""
    worker = EngineWorker(Qwen3TTS(tiny_gguf("tiny-17", "f32"), threads=1))
    extra = []
    try:
        for _ in range(3):
            stats = SynthesisStats()
            chunks = worker.stream(LONG, stats=stats, frames_per_chunk=8)
            await chunks.__anext__()
            await asyncio.sleep(0.02)  # the engine is inside its next chunk
            at_cancel = stats.frames
            await chunks.aclose()
            for _ in range(500):
                if stats.total_s:  # the engine's generator has ended
                    break
                await asyncio.sleep(0.01)
            extra.append(stats.frames - at_cancel)
    finally:
        worker.close()
    assert max(extra) <= 2, f"frames generated after the cancellation: {extra}"


# ---------------------------------------------------------------------------------------- an engine failure
class FailingEngine(Qwen3TTS):
    """The real model, whose engine fails after two chunks of every utterance (as a codec graph failing would)."""

    def stream(self, *args, **kwargs):
        for i, pcm in enumerate(super().stream(*args, **kwargs)):
            if i == 2:
                raise _engine.EngineError("codec graph compute failed")
            yield pcm


async def test_an_engine_error_mid_stream_ends_the_audio_and_the_stream(tiny_gguf):
    tts = FailingEngine(tiny_gguf("tiny-17", "f32"), threads=1)
    async with inproc_server(tts, write_timeout_s=10.0) as (uri, _, server):
        events = await raw_request(uri, SynthesizeStart().event(), SynthesizeChunk(text="Hello there. Bye").event(),
                                   SynthesizeStop().event())
        assert types(events) == ["audio-start", "audio-chunk", "error", "audio-stop", "synthesize-stopped", "closed"]
        assert "codec graph compute failed" in events[-4].data["text"]
        one_shot = await raw_request(uri, Synthesize(text="Hello there.").event())
        assert types(one_shot) == ["audio-start", "audio-chunk", "error", "audio-stop", "closed"]

        ha = HomeAssistantLike(uri)
        await ha.setup()
        spoken = await ha_speak(ha, ["Hello there."])
        assert spoken.ended_by == "synthesize-stopped" and spoken.audio and "error" in spoken.events
        assert len(spoken.audio) < 400 * SPF * 2
