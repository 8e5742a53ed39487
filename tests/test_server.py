"""The Wyoming server, started for real on 127.0.0.1 with the tiny model, driven by the wyoming package's
AsyncTcpClient (and raw sockets for malformed input).

Two kinds of server: the real CLI in a subprocess (`python -m wyoming_qwen3tts ...`), and the same handler
in-process where a test needs to see inside (frames generated, open handlers) or shorter timeouts."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import numpy as np
import pytest
import pytest_asyncio
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice

from wyoming_qwen3tts import __version__
from wyoming_qwen3tts.worker import EngineWorker

from helpers import EVENT_TIMEOUT, SPF, audio_of, collapse, inproc_server, read_until, start_server, stop_process

MAX_FRAMES = 4  # per sentence, so that the random tiny model (which rarely says EOS) stays fast


@pytest.fixture(scope="module")
def cli_server(tiny_gguf, tmp_path_factory):
    """The real server: `python -m wyoming_qwen3tts` on a free port, its log in a file."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    uri, proc = start_server(tiny_gguf("tiny-17", "f32"), log, "--max-frames", str(MAX_FRAMES),
                             "--samples-per-chunk", "1000")
    yield uri, log
    stop_process(proc)


# --------------------------------------------------------------------------------------------- the real CLI
async def test_describe_returns_info(cli_server):
    uri, _ = cli_server
    async with AsyncTcpClient.from_uri(uri) as client:
        await client.write_event(Describe().event())
        info = Info.from_event(await asyncio.wait_for(client.read_event(), EVENT_TIMEOUT))
    (program,) = info.tts
    assert program.name == "qwen3-tts" and program.version == __version__ and program.installed
    assert "Qwen" in program.attribution.name
    assert program.supports_synthesize_streaming
    languages = {"en", "zh", "de", "fr", "it", "ja", "ko", "pt", "ru", "es"}
    voices = {v.name: v for v in program.voices}
    # the speakers, then one variant per speaker and language (Home Assistant never sends a language)
    assert [v.name for v in program.voices[:2]] == ["vivian", "dylan"]
    assert set(voices) == {"vivian", "dylan"} | {f"{s}-{lang}" for s in ("vivian", "dylan") for lang in languages}
    assert set(voices["vivian"].languages) == languages and voices["vivian-de"].languages == ["de"]
    # Home Assistant shows descriptions: each starts with the voice's name and says its language
    assert all(v.description.startswith(v.name.split("-")[0]) for v in program.voices)
    assert voices["vivian-de"].description == "vivian (German, built-in speaker)"
    assert voices["dylan"].description == "dylan (any language, built-in speaker)"


async def test_synthesize_streams_every_sentence_in_one_audio_stream(cli_server):
    uri, _ = cli_server
    async with AsyncTcpClient.from_uri(uri) as client:
        await client.write_event(Synthesize(text="Hello there. How are you today?",
                                            voice=SynthesizeVoice(name="vivian")).event())
        events = await read_until(client, AudioStop().event().type)
    assert collapse([e.type for e in events]) == ["audio-start", "audio-chunk", "audio-stop"]
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    chunks = [AudioChunk.from_event(e) for e in events if AudioChunk.is_type(e.type)]
    assert all(len(c.audio) <= 2 * 1000 for c in chunks)  # --samples-per-chunk 1000
    samples = audio_of(events)
    assert samples.size % SPF == 0 and 2 * 2 * SPF <= samples.size <= 2 * MAX_FRAMES * SPF  # two sentences
    stamps = [c.timestamp for c in chunks]
    assert stamps[0] == 0 and stamps == sorted(stamps)
    assert AudioStop.from_event(events[-1]).timestamp == samples.size * 1000 // 24000


async def test_streaming_text_event_order(cli_server):
    uri, _ = cli_server
    async with AsyncTcpClient.from_uri(uri) as client:
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="dylan")).event())
        for piece in ["Hello the", "re. How are", " you"]:
            await client.write_event(SynthesizeChunk(text=piece).event())
        # The first sentence is complete: its audio comes before the stream ends.
        first = await read_until(client, "audio-stop")
        assert collapse([e.type for e in first]) == ["audio-start", "audio-chunk", "audio-stop"]
        await client.write_event(SynthesizeChunk(text=" today?").event())
        await client.write_event(Synthesize(text="Hello there. How are you today?").event())  # compat copy: ignored
        await client.write_event(SynthesizeStop().event())
        rest = await read_until(client, SynthesizeStopped().event().type)
        assert collapse([e.type for e in rest]) == ["audio-start", "audio-chunk", "audio-stop", "synthesize-stopped"]
        # The connection is reusable for a plain request afterwards.
        await client.write_event(Synthesize(text="Bye.").event())
        again = await read_until(client, "audio-stop")
        assert collapse([e.type for e in again]) == ["audio-start", "audio-chunk", "audio-stop"]


@pytest.mark.parametrize("event, message", [
    (Synthesize(text="   "), "empty"),
    (Synthesize(text="a" * 20_000), "too long"),
    (Synthesize(text="<speak>Hello <break", text_format="ssml"), "SSML"),
    (Event(type="synthesize", data={}), "malformed synthesize"),
])
async def test_a_bad_request_gets_an_error_and_the_connection_closes(cli_server, event, message):
    """Home Assistant ignores `error` and waits for audio-stop or a closed connection: after the error the
    connection is closed (as wyoming-piper does), and the server keeps serving others."""
    uri, _ = cli_server
    async with AsyncTcpClient.from_uri(uri) as client:
        await client.write_event(event if isinstance(event, Event) else event.event())
        reply = await asyncio.wait_for(client.read_event(), EVENT_TIMEOUT)
        assert Error.is_type(reply.type), reply
        assert message in Error.from_event(reply).text and Error.from_event(reply).code == "invalid-request"
        assert await asyncio.wait_for(client.read_event(), EVENT_TIMEOUT) is None  # closed
    async with AsyncTcpClient.from_uri(uri) as client:
        await client.write_event(Describe().event())
        assert Info.is_type((await asyncio.wait_for(client.read_event(), EVENT_TIMEOUT)).type)


async def test_an_unsupported_event_gets_an_error_and_the_connection_stays_usable(cli_server):
    uri, _ = cli_server
    async with AsyncTcpClient.from_uri(uri) as client:
        await client.write_event(Event(type="transcribe", data={}))
        reply = await asyncio.wait_for(client.read_event(), EVENT_TIMEOUT)
        assert Error.is_type(reply.type) and "unsupported event type" in Error.from_event(reply).text
        await client.write_event(Describe().event())
        assert Info.is_type((await asyncio.wait_for(client.read_event(), EVENT_TIMEOUT)).type)


async def test_language_codes_and_ssml_breaks(cli_server):
    uri, _ = cli_server
    async with AsyncTcpClient.from_uri(uri) as client:
        await client.write_event(Synthesize(text="Hallo.", voice=SynthesizeVoice(language="de-DE")).event())
        assert collapse([e.type for e in await read_until(client, "audio-stop")])[-1] == "audio-stop"
        await client.write_event(Synthesize(text='<speak>Hello. <break time="500ms"/> World.</speak>',
                                            text_format="ssml").event())
        samples = audio_of(await read_until(client, "audio-stop"))
    # the break is exactly 0.5 s of digital silence between two whole-frame sentences
    assert (samples.size - 12_000) % SPF == 0
    silent = np.flatnonzero(samples == 0)
    runs = np.split(silent, np.flatnonzero(np.diff(silent) != 1) + 1)
    assert max(len(r) for r in runs) >= 12_000


def raw_exchange(uri: str, data: bytes, read_timeout: float = 15) -> list[dict]:
    """Send raw bytes, return the JSON headers the server answers with until it closes."""
    host, port = uri.removeprefix("tcp://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # nothing more comes: a truncated event ends at end of stream
        s.settimeout(read_timeout)
        buf = b""
        try:
            while chunk := s.recv(65536):
                buf += chunk
        except socket.timeout:
            pass
    headers = []
    while buf:
        line, _, buf = buf.partition(b"\n")
        header = json.loads(line)
        n = header.get("data_length", 0)
        header["data"] = {**header.get("data", {}), **(json.loads(buf[:n]) if n else {})}
        buf = buf[n + header.get("payload_length", 0):]
        headers.append(header)
    return headers


@pytest.mark.parametrize("data, message", [
    (b"{not json\n", "not valid JSON"),
    (b"\xff\xfe\x00garbage\n", "not valid JSON"),
    (json.dumps({"type": "synthesize", "data_length": 1 << 30}).encode() + b"\n", "larger than the limit"),
    (json.dumps({"type": "synthesize", "data_length": 10}).encode() + b"\n{\"te", None),  # closed mid-event
    (b'["a list"]\n', "no 'type'"),
    (b"x" * 100_000 + b"\n", "too long"),
])
def test_malformed_input_closes_only_that_connection(cli_server, data, message):
    uri, _ = cli_server
    headers = raw_exchange(uri, data, read_timeout=15)
    if message:
        assert headers and headers[-1]["type"] == "error" and message in headers[-1]["data"]["text"], headers
    # the server keeps serving others
    assert raw_exchange(uri, json.dumps({"type": "describe"}).encode() + b"\n", read_timeout=2)[0]["type"] == "info"


def test_many_connections_opened_and_dropped(cli_server):
    uri, _ = cli_server
    host, port = uri.removeprefix("tcp://").split(":")
    for i in range(100):
        s = socket.create_connection((host, int(port)))
        if i % 3 == 0:
            s.sendall(json.dumps({"type": "synthesize", "data": {"text": "Hello there."}}).encode() + b"\n")
        s.close()
    # A burst may briefly exceed the connection limit (a request's handler notices its client left when it
    # writes): such a connection is refused with an error, and the server serves again once they are gone.
    deadline = time.monotonic() + 20
    describe = json.dumps({"type": "describe"}).encode() + b"\n"
    while (reply := raw_exchange(uri, describe, read_timeout=5)[0])["type"] != "info":
        assert reply["type"] == "error" and "connections are open" in reply["data"]["text"], reply
        assert time.monotonic() < deadline, "the server did not recover from the burst"
        time.sleep(0.2)


# ----------------------------------------------------------------------------------------- in-process server
@pytest_asyncio.fixture
async def inproc(tiny_gguf):
    async with inproc_server(tiny_gguf("tiny-17", "f32")) as served:
        yield served


@pytest.mark.parametrize("fault, exception, answer", [
    # a misspelt sampling option: building the request raises a TypeError after the audio has started
    (dict(generation={"temprature": 0.5}), TypeError, ["audio-start", "error", "audio-stop"]),
    # a limit that is not a number: a ValueError that is no validation error, before any audio
    (dict(max_audio_s=float("nan")), ValueError, ["error"]),
])
async def test_a_fault_of_the_server_is_reported_as_an_internal_error(tiny_gguf, caplog, fault, exception, answer):
    """An exception that is no validation error is the server's fault, whatever its type: here a bad value in the
    server's own settings, which no client can cause. The client is told "internal error" (not that its request
    was bad), gets the end events it waits for and the connection closes, and the log has the traceback at ERROR
    level; a real bad request on the same server keeps its own message."""
    async with inproc_server(tiny_gguf("tiny-17", "f32"), **fault) as (uri, _, _):
        with caplog.at_level(logging.ERROR, logger="wyoming_qwen3tts.handler"):
            async with AsyncTcpClient.from_uri(uri) as client:
                await client.write_event(Synthesize(text="Hello there.").event())
                events = []
                while (event := await asyncio.wait_for(client.read_event(), EVENT_TIMEOUT)) is not None:
                    events.append(event)
        async with AsyncTcpClient.from_uri(uri) as client:
            await client.write_event(Synthesize(text="   ").event())
            bad_input = Error.from_event(await asyncio.wait_for(client.read_event(), EVENT_TIMEOUT))
    assert [e.type for e in events] == answer
    error = Error.from_event(events[answer.index("error")])
    assert error.code == "internal-error" and error.text.startswith(f"internal error: {exception.__name__}(")
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "internal error" in record.getMessage() and record.exc_info and record.exc_info[0] is exception
    assert (bad_input.code, bad_input.text) == ("invalid-request", "text is empty")


async def wait_idle(worker: EngineWorker, settle_s: float = 0.3) -> int:
    """Frames generated once the worker has stopped producing."""
    last = -1
    while worker.frames_generated != last:
        last = worker.frames_generated
        await asyncio.sleep(settle_s)
    return last


async def test_a_client_that_pauses_gets_all_its_audio_while_the_engine_runs_on(tiny_gguf):
    """The engine never waits for a client (others need it): while this one pauses, with little buffer space
    between it and the server, its 400-frame sentence is generated to the end and buffered, and the client still
    gets every sample once it reads again."""
    async with inproc_server(tiny_gguf("tiny-17", "f32"), write_timeout_s=20.0) as (uri, worker, _):
        host, port = uri.removeprefix("tcp://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.connect((host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(json.dumps({"type": "synthesize", "data": {"text": "Hello there."}}).encode() + b"\n")
        await writer.drain()
        deadline = time.monotonic() + 15
        while worker.frames_generated < 400:  # the client reads nothing meanwhile
            assert time.monotonic() < deadline, f"the engine waited for the client ({worker.frames_generated} frames)"
            await asyncio.sleep(0.05)
        client = AsyncTcpClient(host, int(port))
        client._reader, client._writer = reader, writer
        events = await read_until(client, "audio-stop")
        writer.close()
    assert audio_of(events).size == 400 * SPF


async def test_disconnect_cancels_the_synthesis(inproc, caplog):
    caplog.set_level(logging.INFO)
    uri, worker, server = inproc
    before = worker.frames_generated
    client = AsyncTcpClient.from_uri(uri)
    await client.connect()
    await client.write_event(Synthesize(text="Hello there.").event())
    await client.read_event()
    await client.read_event()
    await client.disconnect()
    stopped_at = await wait_idle(worker)
    assert stopped_at - before < 200, "the engine kept generating for a client that left"
    assert not server._handlers
    assert any("synthesis cancelled" in r.getMessage() for r in caplog.records)


async def test_a_client_that_reads_nothing_is_dropped(inproc):
    uri, worker, server = inproc
    host, port = uri.removeprefix("tcp://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # a client that buffers little
    sock.connect((host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(json.dumps({"type": "synthesize", "data": {"text": "Hello there."}}).encode() + b"\n")
    await writer.drain()
    # other clients are served meanwhile
    async with AsyncTcpClient.from_uri(uri) as client:
        await client.write_event(Describe().event())
        assert Info.is_type((await asyncio.wait_for(client.read_event(), 5)).type)
    await wait_idle(worker, settle_s=1.5)  # write timeout 1 s
    for _ in range(50):  # the server closed the stuck connection
        if not server._handlers:
            break
        await asyncio.sleep(0.1)
    assert not server._handlers
    writer.close()


async def test_describe_is_answered_while_a_synthesis_runs(inproc):
    uri, worker, _ = inproc
    async with AsyncTcpClient.from_uri(uri) as busy, AsyncTcpClient.from_uri(uri) as other:
        await busy.write_event(Synthesize(text="Hello there.").event())
        assert AudioStart.is_type((await busy.read_event()).type)
        await other.write_event(Describe().event())
        assert Info.is_type((await asyncio.wait_for(other.read_event(), 2)).type)
        await read_until(busy, "audio-stop")


async def test_data_that_never_arrives_times_out(inproc):
    uri, _, _ = inproc
    reader, writer = await asyncio.open_connection(*uri.removeprefix("tcp://").split(":"))
    writer.write(json.dumps({"type": "synthesize", "data_length": 50}).encode() + b"\n{\"text\": ")
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 5)
    header = json.loads(line)
    data = json.loads(await reader.readexactly(header["data_length"]))
    assert header["type"] == "error" and "did not arrive" in data["text"]
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
    writer.close()
