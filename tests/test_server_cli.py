"""The server's command line: URIs other than tcp://, defaults, --no-streaming, zeroconf, start-up failures."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wyoming.client import AsyncClient
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from wyoming_qwen3tts import __main__ as server_main
from wyoming_qwen3tts import __version__

EVENT_TIMEOUT = 30


def run_server(args: list[str], cwd: Path) -> subprocess.Popen:
    # cwd outside the source tree: `python -m` must import the installed package
    return subprocess.Popen([sys.executable, "-m", "wyoming_qwen3tts", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def wait_for_socket(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("server did not start: " + proc.stdout.read().decode())
        time.sleep(0.1)


def test_version(tmp_path):
    r = subprocess.run([sys.executable, "-m", "wyoming_qwen3tts", "--version"], cwd=tmp_path, capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stdout.strip() == __version__


async def test_unix_socket_no_streaming_and_defaults(tiny_gguf, tmp_path):
    sock = tmp_path / "tts.sock"
    proc = run_server(["--model", str(tiny_gguf("tiny-17", "f32")), "--uri", f"unix://{sock}", "--threads", "1",
                       "--no-streaming", "--voice", "dylan", "--language", "zh", "--max-frames", "3"], tmp_path)
    try:
        wait_for_socket(sock, proc)
        async with AsyncClient.from_uri(f"unix://{sock}") as client:
            await client.write_event(Describe().event())
            info = Info.from_event(await asyncio.wait_for(client.read_event(), EVENT_TIMEOUT))
            assert not info.tts[0].supports_synthesize_streaming
            await client.write_event(Synthesize(text="Hello.").event())
            types = []
            while not types or types[-1] != "audio-stop":
                types.append((await asyncio.wait_for(client.read_event(), EVENT_TIMEOUT)).type)
            assert types[0] == "audio-start"
            # A client that read `info` while streaming was on still streams: accepted quietly, the compatibility
            # `synthesize` is spoken, and `synthesize-stop` is answered (Home Assistant waits for it).
            await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="vivian")).event())
            await client.write_event(SynthesizeChunk(text="Hello. ").event())
            await client.write_event(SynthesizeChunk(text="Bye.").event())
            await client.write_event(Synthesize(text="Hello. Bye.", voice=SynthesizeVoice(name="vivian")).event())
            await client.write_event(SynthesizeStop().event())
            types = []
            while not types or types[-1] == "audio-chunk" or types[-1] not in ("synthesize-stopped", "error"):
                types.append((await asyncio.wait_for(client.read_event(), EVENT_TIMEOUT)).type)
            assert [t for t in types if t != "audio-chunk"] == [
                "audio-start", "audio-stop", "synthesize-stopped"], types
            assert "audio-chunk" in types
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("args, message", [
    (["--voice", "nobody"], "unknown --voice 'nobody'"),
    (["--language", "xx"], "--language: unknown language 'xx'"),
    (["--model", "definitely/not-cached", "--local-files-only"], "is not in the cache"),
    (["--model", "no such model!"], "neither a file, a directory nor a Hugging Face repository id"),
])
def test_start_up_errors_are_one_sentence(tiny_gguf, tmp_path, args, message):
    base = ["--model", str(tiny_gguf("tiny-17", "f32"))] if "--model" not in args else []
    r = subprocess.run([sys.executable, "-m", "wyoming_qwen3tts", *base, *args, "--data-dir", str(tmp_path / "data"),
                        "--uri", f"unix://{tmp_path / 's.sock'}", "--threads", "1"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("damage", ["garbage", "truncated", "header-only", "metadata"])
def test_a_corrupt_gguf_is_one_sentence(tiny_gguf, tmp_path, damage):
    good = tiny_gguf("tiny-17", "f32").read_bytes()
    bad = tmp_path / "model.gguf"
    if damage == "garbage":
        bad.write_bytes(b"GGUF" + os.urandom(4000))
    elif damage == "truncated":
        bad.write_bytes(good[:len(good) // 3])
    elif damage == "header-only":
        bad.write_bytes(good[:24])
    else:  # the metadata's counts and lengths overwritten with huge numbers
        bad.write_bytes(good[:8] + b"\xff" * 64 + good[72:])
    r = subprocess.run([sys.executable, "-m", "wyoming_qwen3tts", "--model", str(bad), "--threads", "1",
                        "--uri", f"unix://{tmp_path / 's.sock'}", "--data-dir", str(tmp_path / "data")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "cannot load the model" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


async def test_zeroconf_announces_the_tcp_port(tiny_gguf, monkeypatch):
    registered = {}

    class FakeZeroconf:
        def __init__(self, port, name=None, host=None):
            registered.update(port=port, name=name, host=host)

        async def register_server(self):
            registered["registered"] = True

    async def no_serving(self, handler_factory):
        registered["served"] = True

    import wyoming.zeroconf
    from wyoming.server import AsyncTcpServer

    monkeypatch.setattr(wyoming.zeroconf, "HomeAssistantZeroconf", FakeZeroconf)
    monkeypatch.setattr(AsyncTcpServer, "run", no_serving)
    args = server_main.build_parser().parse_args(
        ["--model", str(tiny_gguf("tiny-17", "f32")), "--uri", "tcp://0.0.0.0:10555", "--zeroconf", "kitchen-tts",
         "--threads", "1"])
    assert await server_main.serve(args) == 0
    assert registered == {"port": 10555, "name": "kitchen-tts", "host": None, "registered": True, "served": True}
