"""Helpers shared by several test modules (fixtures live in conftest.py): the fixture paths, real server processes
on loopback and the Wyoming reads the tests make of them, the client that behaves like Home Assistant's
integration, and the MQTT broker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import shutil
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import aiomqtt
import numpy as np
import pytest
from safetensors.numpy import load_file
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.server import AsyncTcpServer
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE_FIXTURES_ENV = "QWEN3TTS_TEST_REFERENCE_FIXTURES"
SPF = 1920  # samples per codec frame
EVENT_TIMEOUT = 30
HANG_S = 60  # a request that takes longer than this left the client waiting


def oracle(name: str, root: Path = FIXTURES) -> dict[str, np.ndarray]:
    """The reference's recorded run of the tiny checkpoint ``name`` (tests/reference/make_fixtures.py)."""
    return load_file(str(root / name / "oracle.safetensors"))


def mode_kwargs(o: dict[str, np.ndarray]) -> dict[str, dict]:
    """The engine arguments of each reference run (tests/reference/make_fixtures.py), as bare token ids."""
    ref_ids = o["ids.ref"][0].tolist()[3:-2]
    instruct = o["ids.instruct"][0].tolist()
    xvec = o["spk.embedding"]
    return {
        "custom_voice": dict(speaker="vivian", language="english"),
        "custom_voice_streaming_text": dict(speaker="vivian", language="english", non_streaming_text=False),
        "custom_voice_dialect_instruct": dict(speaker="dylan", language="auto", instruct_ids=instruct),
        "voice_design_streaming_text": dict(language="auto", instruct_ids=instruct, non_streaming_text=False),
        "xvector_clone": dict(language="english", speaker_embedding=xvec),
        "icl_clone": dict(language="english", speaker_embedding=xvec, ref_codes=o["ref_code"], ref_text_ids=ref_ids),
        "icl_clone_non_streaming": dict(language="english", speaker_embedding=xvec, ref_codes=o["ref_code"],
                                        ref_text_ids=ref_ids, non_streaming_text=True),
    }


# ------------------------------------------------------------------------- the packed conv kernel (packed_conv.h)
CONV_REL_TOL = 2e-6    # max abs error / max |result| against float64 on the same weights (observed 7.2e-7)
SNAKE_ABS_TOL = 1e-6   # the fused epilogue against float64 after the same float32 adds (observed 1.2e-7)
CONV_SHAPES = [  # cin, cout, k, dil, stride, T, threads
    (13, 40, 7, 3, 1, 29, 2),    # odd channels, a partial output block (40 = 16 + 16 + 8), odd T, dilation
    (32, 16, 3, 1, 2, 17, 3),    # stride 2 (the encoders' downsampling), 3 threads over 2 output blocks
    (64, 1, 7, 1, 1, 61, 2),     # a single output (the decoder's last conv)
    (96, 96, 7, 9, 1, 7, 1),     # fewer time steps than one register block, dilation 9
    (48, 24, 1, 1, 1, 130, 2),   # k = 1
    (8, 33, 5, 2, 3, 11, 2),     # stride and dilation together, 33 outputs
]
EPILOGUE_PARTS = ["bias", "bias+snake", "bias+residual", "bias+residual+snake", "snake"]


# The codec decoder of a BF16 GGUF with its convs on the BF16-pair kernel (AVX512-BF16, or SIMDe's emulation of it;
# tests/test_conv_packed.py, tests/test_avx512_emulated.py), on the codec oracle's codes:
PAIRS_REF_COS = 0.9999  # vs the reference's F32 decoder (observed 0.99998)
PAIRS_REF_ABS = 1e-3    # its max abs error against a peak of 0.02 (observed 2.4e-4; ggml's BF16 path: 2.7e-4)
PAIRS_GGML_ABS = 5e-4   # vs ggml's BF16 path, the same operand rounding in another order (observed 3.1e-4)


# The encoders of a GGUF that is not f32 with BF16 operands (the AMX tiles, or the packed conv kernel's BF16 pairs)
# against the F32 path (tests/test_encoders_bf16.py, tests/test_avx512_emulated.py):
XVEC_COS_MIN = 0.9999   # x-vector cosine to the reference / F32 (observed >= 0.9999959)
FEAT_REL_MAX = 1.5e-2   # downsampled features vs the F32 path, relative L2 (observed 5.9e-3)
FIRST_BOOK_MIN = 0.99   # codes vs the oracle / the F32 path, first codebook (observed 1.0)
ALL_BOOKS_MIN = 0.95    # codes vs the oracle / the F32 path, all 16 books (observed 0.982 / 0.9875)


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def bf16(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to BF16 (nearest, ties to even), as float64."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


def reference_conv(w, x, T, dil, stride, weights="bf16"):
    """out[t, o] = sum_j sum_c x[t*stride + j*dil, c] * w[o, j, c], float64, with the operands of the kernel's weight
    form (E.conv_packed's `weights`): w rounded to BF16 ("bf16"), as given ("f32"), or w and x rounded to BF16
    ("bf16_pairs")."""
    wq = w.astype(np.float64) if weights == "f32" else bf16(w)
    xq = bf16(x) if weights == "bf16_pairs" else x.astype(np.float64)
    cout, k, cin = w.shape
    out = np.zeros((T, cout))
    for j in range(k):
        rows = xq[np.arange(T) * stride + j * dil]
        out += rows @ wq[:, j, :].T
    return out


def conv_shape_case(cin, cout, k, dil, stride, T):
    """Random weights [cout, k, cin] and input [Tx, cin] (2 spare rows) for one of CONV_SHAPES."""
    rng = np.random.default_rng(cin * 1000 + cout + k + dil)
    w = rng.standard_normal((cout, k, cin)).astype(np.float32)
    x = rng.standard_normal(((T - 1) * stride + (k - 1) * dil + 1 + 2, cin)).astype(np.float32)
    return w, x


def conv_epilogue_case(parts: str) -> dict:
    """One of EPILOGUE_PARTS: the conv's w, x, T, dil and the epilogue's bias, residual, snake (or None)."""
    rng = np.random.default_rng(len(parts))
    cin, cout, k, dil, T = 24, 40, 7, 3, 23
    w = (rng.standard_normal((cout, k, cin)) * 0.2).astype(np.float32)
    x = rng.standard_normal(((T - 1) + (k - 1) * dil + 1, cin)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32) if "bias" in parts else None
    residual = rng.standard_normal((T, cout)).astype(np.float32) if "residual" in parts else None
    sn = None
    if "snake" in parts:  # alpha, beta in the trained models' range: exp(alpha) up to ~20 gives many periods
        alpha, beta = rng.uniform(-1, 3, cout), rng.uniform(-2, 1, cout)
        sn = (np.exp(alpha).astype(np.float32), (1 / (np.exp(beta) + 1e-9)).astype(np.float32))
    return dict(w=w, x=x, T=T, dil=dil, bias=bias, residual=residual, snake=sn)


def conv_replay_args(tmp: Path, w, x, T, dil=1, stride=1, bias=None, snake=None, residual=None, threads=1,
                     form=0) -> list[str]:
    """The arguments of `kernel_replay conv` (native/tests/kernel_replay.cpp) for those of E.conv_packed, the
    weight form as qwen3tts_debug.h's qt_conv_weights number; the inputs are written to files in tmp, the output
    goes to tmp / "out.bin"."""
    cout, k, cin = w.shape
    files = {}
    inputs = dict(w=w, x=x, bias=bias, ea=None if snake is None else snake[0], ib=None if snake is None else snake[1],
                  res=residual)
    for name, value in inputs.items():
        files[name] = "-"
        if value is not None:
            files[name] = str(tmp / f"{name}.bin")
            np.ascontiguousarray(value, dtype=np.float32).tofile(files[name])
    return ["conv", *map(str, [cin, cout, k, dil, stride, T, threads, form]), files["w"], files["x"], files["bias"],
            files["ea"], files["ib"], files["res"], str(tmp / "out.bin")]


def reference_epilogue(plain: np.ndarray, bias, residual, snake) -> np.ndarray:
    """The epilogue on the kernel's plain conv (float32 [T, cout]): the adds in float32 as the kernel does them, the
    snake's argument rounded to float32 likewise, then the sine in float64: only the polynomial sine's error and
    the final multiply-add's rounding separate the kernel's fused result from this."""
    v = plain
    if bias is not None:
        v = v + bias
    if residual is not None:
        v = v + residual
    if snake is not None:
        arg = (v * snake[0]).astype(np.float64)
        v = v + snake[1].astype(np.float64) * np.sin(arg) ** 2
    return v


# --------------------------------------------------------------------------------------------------- processes
def quantized_activations(x: np.ndarray, block: int) -> np.ndarray:
    """x [ncols, K] as the packed mat-vec kernels quantize it: int8 codes per `block` values (256 for Q4_K, 32 for
    Q8_0), scale max|x| / 127, round to nearest even; returned dequantized, as float64."""
    blocks = x.reshape(x.shape[0], -1, block)
    amax = np.abs(blocks).max(-1, keepdims=True)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    return (np.rint(blocks * inv) * (amax / 127).astype(np.float64)).reshape(x.shape)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, what: str, timeout: float = 60) -> None:
    """Until `proc` (logging to `log`) accepts connections on the port; a failure if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{what} did not start:\n{log.read_text(errors='replace')}")


def start_server(model: Path, log: Path, *args: str, **popen) -> tuple[str, subprocess.Popen]:
    """The real server (`python -m wyoming_qwen3tts`, one thread, greedy, --debug, then `args`) on a free port,
    logging to `log`, run in log's folder (outside the source tree); (uri, process) once it accepts connections."""
    port = free_port()
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wyoming_qwen3tts", "--model", str(model), "--uri", f"tcp://127.0.0.1:{port}",
             "--threads", "1", "--greedy", "--debug", *args],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=log.parent, **popen)
    wait_port(port, proc, log, "server")
    return f"tcp://127.0.0.1:{port}", proc


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_text(log: Path) -> str:
    return log.read_text(errors="replace")


@contextlib.asynccontextmanager
async def inproc_server(model: Path, **overrides):
    """The server's handler in this process, where the worker and the open handlers can be inspected; `model` is
    a GGUF path or a loaded Qwen3TTS. Yields (uri, worker, server)."""
    from wyoming_qwen3tts import Qwen3TTS
    from wyoming_qwen3tts.__main__ import build_info
    from wyoming_qwen3tts.handler import Qwen3TtsEventHandler, ServerSettings
    from wyoming_qwen3tts.protocol import Limits
    from wyoming_qwen3tts.voices import builtin_voices
    from wyoming_qwen3tts.worker import EngineWorker

    tts = model if isinstance(model, Qwen3TTS) else Qwen3TTS(model, threads=1)
    worker = EngineWorker(tts)
    voices = builtin_voices(tts)
    settings = ServerSettings(**{**dict(default_voice="vivian", samples_per_chunk=SPF, write_timeout_s=1.0,
                                        generation=dict(greedy=True, min_frames=400, max_frames=400),
                                        limits=Limits(body_timeout_s=0.5)), **overrides})
    port = free_port()
    server = AsyncTcpServer("127.0.0.1", port)
    await server.start(partial(Qwen3TtsEventHandler, build_info(tts, voices, True), settings, worker, voices,
                               tts.languages))
    try:
        yield f"tcp://127.0.0.1:{port}", worker, server
    finally:
        await server.stop()
        worker.close()


# ------------------------------------------------------------------------------------------------ Wyoming reads
async def read_until(client: AsyncTcpClient, last_type: str, limit: int = 10_000) -> list[Event]:
    events = []
    for _ in range(limit):
        event = await asyncio.wait_for(client.read_event(), EVENT_TIMEOUT)
        assert event is not None, f"connection closed after {[e.type for e in events]}"
        events.append(event)
        if event.type == last_type:
            return events
    raise AssertionError(f"no {last_type} in {limit} events")


def audio_of(events: list[Event]) -> np.ndarray:
    chunks = [AudioChunk.from_event(e) for e in events if AudioChunk.is_type(e.type)]
    return np.frombuffer(b"".join(c.audio for c in chunks), dtype="<i2")


def collapse(types: list[str]) -> list[str]:
    """Event types with runs of audio-chunk collapsed to one entry."""
    out: list[str] = []
    for t in types:
        if not (t == "audio-chunk" and out and out[-1] == "audio-chunk"):
            out.append(t)
    return out


def types(events: list[Event | None]) -> list[str]:
    return collapse([e.type if e is not None else "closed" for e in events])


async def raw_request(uri: str, *events: Event, until: str | None = None, times: int = 1) -> list[Event | None]:
    """Send events (as far as the server reads them), then read until the connection closes (None is then the
    last item) or, if given, the ``times``-th event of type ``until`` arrives; a test fails if that takes longer
    than HANG_S."""
    received: list[Event | None] = []
    client = AsyncTcpClient.from_uri(uri)
    await client.connect()

    async def read_all() -> None:
        seen = 0
        while (event := await client.read_event()) is not None:
            received.append(event)
            seen += event.type == until
            if seen == times:
                return
        received.append(None)

    try:
        with contextlib.suppress(OSError):  # the server may close after an error, before reading them all
            for event in events:
                await client.write_event(event)
        await asyncio.wait_for(read_all(), HANG_S)
    finally:
        with contextlib.suppress(OSError):
            await client.disconnect()
    return received


# ----------------------------------------------------------------------------------------- the HA-like client
@dataclass
class Spoken:
    audio: bytes = b""
    events: list[str] = field(default_factory=list)  # every event type received, errors included
    ended_by: str = ""  # "synthesize-stopped", "audio-stop" or "closed"


class HomeAssistantLike:
    def __init__(self, uri: str, streaming_client: bool = True) -> None:
        host, port = uri.removeprefix("tcp://").split(":")
        self.host, self.port = host, int(port)
        self.streaming_client = streaming_client  # False: Home Assistant before 2025.7
        self.info: Info | None = None
        self.voices: dict[str, list[tuple[str, str]]] = defaultdict(list)  # language -> [(voice id, shown name)]

    async def setup(self) -> None:
        """The integration's setup: one describe, remembered until the integration is reloaded."""
        async with AsyncTcpClient(self.host, self.port) as client:
            await client.write_event(Describe().event())
            while not Info.is_type((event := await client.read_event()).type):
                pass
        self.info = Info.from_event(event)
        program = next(p for p in self.info.tts if p.installed)
        for voice in program.voices:
            for language in voice.languages:
                self.voices[language].append((voice.name, voice.description or voice.name))

    @property
    def server_streams(self) -> bool:
        return next(p for p in self.info.tts if p.installed).supports_synthesize_streaming

    async def speak(self, chunks: list[str], voice: str | None = None) -> Spoken:
        synthesize_voice = SynthesizeVoice(name=voice) if voice is not None else None
        if self.streaming_client and self.server_streams:
            return await self._stream(chunks, synthesize_voice)
        return await self._one_shot("".join(chunks), synthesize_voice)

    async def _stream(self, chunks: list[str], voice: SynthesizeVoice | None) -> Spoken:
        client = AsyncTcpClient(self.host, self.port)
        await client.connect()

        async def write() -> None:
            try:
                await client.write_event(SynthesizeStart(voice=voice).event())
                for chunk in chunks:
                    await client.write_event(SynthesizeChunk(text=chunk).event())
                await client.write_event(Synthesize(text="".join(chunks), voice=voice).event())
                await client.write_event(SynthesizeStop().event())
            except OSError:
                pass  # "Unexpected disconnection from TTS client"

        writer = asyncio.create_task(write())
        result = Spoken()
        header = False
        try:
            while (event := await client.read_event()) is not None:
                result.events.append(event.type)
                if header and AudioChunk.is_type(event.type):
                    result.audio += AudioChunk.from_event(event).audio
                elif not header and AudioStart.is_type(event.type):
                    header = True
                elif SynthesizeStopped.is_type(event.type):
                    result.ended_by = "synthesize-stopped"
                    break
            else:
                result.ended_by = "closed"
        except OSError:
            result.ended_by = "closed"
        finally:
            await client.disconnect()
            await writer
        return result

    async def _one_shot(self, text: str, voice: SynthesizeVoice | None) -> Spoken:
        result = Spoken()
        async with AsyncTcpClient(self.host, self.port) as client:
            await client.write_event(Synthesize(text=text, voice=voice).event())
            while True:
                event = await client.read_event()
                if event is None:
                    result.ended_by = "closed"  # "Connection lost": no audio
                    return result
                result.events.append(event.type)
                if AudioStop.is_type(event.type):
                    result.ended_by = "audio-stop"
                    return result
                if AudioChunk.is_type(event.type):
                    result.audio += AudioChunk.from_event(event).audio


async def ha_speak(ha: HomeAssistantLike, chunks: list[str], voice: str | None = None) -> Spoken:
    return await asyncio.wait_for(ha.speak(chunks, voice), HANG_S)


# ------------------------------------------------------------------------------------------------- the broker
class Broker:
    """mosquitto on a loopback port, restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(self.binary).is_file():
            pytest.fail("the MQTT tests need the mosquitto broker (Debian/Ubuntu: apt-get install mosquitto); "
                        f"not found on PATH nor at {self.binary}")
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                             "log_dest stderr\n")  # (as root, mosquitto drops to its own user: no log file in tmp)
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=log,
                                         cwd=self.workdir)
        wait_port(self.port, self.proc, self.log, "mosquitto", timeout=15)

    def kill(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- MQTT client
@contextlib.asynccontextmanager
async def mqtt_client(port: int, *topics: str):
    async with aiomqtt.Client("127.0.0.1", port, timeout=10) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)
        yield client


async def next_message(client: aiomqtt.Client, topic: str, predicate=lambda m: True,
                       timeout: float = EVENT_TIMEOUT) -> aiomqtt.Message:
    async def find() -> aiomqtt.Message:
        async for message in client.messages:
            if message.topic.matches(topic) and predicate(message):
                return message
        raise AssertionError("MQTT client disconnected")

    try:
        return await asyncio.wait_for(find(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"no message on {topic} within {timeout} s") from None


async def wait_retained(port: int, topic: str, payload: bytes, timeout: float = EVENT_TIMEOUT) -> None:
    """Wait until the broker holds `payload` as the retained message of `topic`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with mqtt_client(port, topic) as client:
                await next_message(client, topic, lambda m: m.payload == payload, timeout=max(0.1, deadline -
                                                                                               time.monotonic()))
                return
        except aiomqtt.MqttError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


MQTT_PREFIX = "qwen3tts"
MQTT_MAX_FRAMES = 3


def start_mqtt_server(model: Path, workdir: Path, broker_port: int, *extra: str, prefix: str = MQTT_PREFIX,
                      wait_online: bool = True) -> tuple[str, subprocess.Popen, Path]:
    """The real server with its MQTT bridge (every sentence MQTT_MAX_FRAMES frames, data in `workdir`), once the
    bridge has said "online"; (wyoming uri, process, log)."""
    log = workdir / "server.log"
    uri, proc = start_server(model, log, "--max-frames", str(MQTT_MAX_FRAMES), "--mqtt-host", "127.0.0.1",
                             "--mqtt-port", str(broker_port), "--data-dir", str(workdir), *extra)
    if wait_online:
        asyncio.run(wait_retained(broker_port, f"{prefix}/status", b"online"))
    return uri, proc, log


# ------------------------------------------------------------- requests for native/tests/engine_replay.cpp
def session_arguments(tts, monkeypatch, **request) -> dict:
    """The arguments Qwen3TTS passes to the engine's Session for this request (the C API's prompt + sampling)."""
    captured = {}

    def capture(model, **kw):
        captured.update(kw)
        raise _Captured

    from wyoming_qwen3tts import _native
    monkeypatch.setattr(_native._engine, "Session", capture)
    with pytest.raises(_Captured):
        tts.open_session(**request)
    monkeypatch.undo()
    return captured


class _Captured(Exception):
    pass


def request_file(path: Path, args: dict) -> None:
    """args (session_arguments) as engine_replay's REQUEST.txt: one field a line."""
    lines = []
    for key, value in args.items():
        if value is None or key in ("record", "forced_codes"):
            continue
        if key in ("speaker_embedding", "ref_codes", "ref_text_ids"):
            raise AssertionError(f"engine_replay does not take {key}")
        values = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
        lines.append(" ".join([key, *(repr(float(v)) if isinstance(v, float) else str(int(v)) for v in values)]))
    path.write_text("\n".join(lines) + "\n")
