"""The server as Home Assistant's own `wyoming` integration drives it, and bad input that must not leave such a
client waiting.

`HomeAssistantLike` behaves like the integration (homeassistant/components/wyoming/tts.py and data.py): it reads
`info` once, at setup; its voice picker lists per pipeline language the voices whose `languages` hold it, showing
`description or name`; it sends only a voice name, never a language; it streams every request (`synthesize-start`,
`synthesize-chunk`s, a full-text `synthesize` copy, `synthesize-stop`, written by a task of their own) and reads
until `synthesize-stopped` or a closed connection, or, for a server without streaming or an older Home Assistant,
sends one `synthesize` and reads until `audio-stop` or a closed connection. It ignores `error` events and has no
timeout: each test wraps it in a generous outer timeout, so a server that leaves it waiting fails the test.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from wyoming.audio import AudioChunk
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from helpers import (HANG_S, SPF, HomeAssistantLike, collapse, ha_speak, log_text, raw_request, start_server,
                     stop_process, types)

SENTENCE_FRAMES = 4  # --max-frames: every sentence of the random tiny model is 4 frames
MAX_AUDIO_S = 3.0


# --------------------------------------------------------------------------------------------------- servers
@pytest.fixture(scope="module")
def server(tiny_gguf, tmp_path_factory):
    log = tmp_path_factory.mktemp("ha-server") / "server.log"
    uri, proc = start_server(tiny_gguf("tiny-17", "f32"), log, "--max-frames", str(SENTENCE_FRAMES),
                             "--max-audio-seconds", str(MAX_AUDIO_S))
    yield uri, log
    stop_process(proc)


@pytest.fixture(scope="module")
def no_streaming_server(tiny_gguf, tmp_path_factory):
    log = tmp_path_factory.mktemp("ha-server-no-streaming") / "server.log"
    uri, proc = start_server(tiny_gguf("tiny-17", "f32"), log, "--max-frames", str(SENTENCE_FRAMES), "--no-streaming")
    yield uri, log
    stop_process(proc)


# ------------------------------------------------------------------------------------------------ the paths
async def test_streaming_path_speaks_an_llm_reply_and_ends_with_synthesize_stopped(server):
    uri, _ = server
    ha = HomeAssistantLike(uri)
    await ha.setup()
    spoken = await ha_speak(ha, ["The bed", "room light is off", ". The kitchen lights are on", ". Anything else?"],
                            voice="vivian")
    assert spoken.ended_by == "synthesize-stopped" and "error" not in spoken.events
    assert len(spoken.audio) == 3 * SENTENCE_FRAMES * SPF * 2  # three sentences


async def test_one_shot_path_of_an_older_home_assistant(server):
    uri, _ = server
    ha = HomeAssistantLike(uri, streaming_client=False)
    await ha.setup()
    spoken = await ha_speak(ha, ["Hello there. How are you?"], voice="dylan")
    assert spoken.ended_by == "audio-stop" and len(spoken.audio) == 2 * SENTENCE_FRAMES * SPF * 2


async def test_a_server_that_stopped_streaming_still_answers_a_client_that_read_info_before(server,
                                                                                            no_streaming_server):
    uri, _ = server
    ha = HomeAssistantLike(uri)
    await ha.setup()  # info read while the server streamed...
    assert ha.server_streams
    stale = HomeAssistantLike(no_streaming_server[0])
    stale.info = ha.info
    spoken = await ha_speak(stale, ["Hello there.", " Bye."])  # ...then it restarted with --no-streaming
    assert spoken.ended_by == "synthesize-stopped" and "error" not in spoken.events
    assert len(spoken.audio) == 2 * SENTENCE_FRAMES * SPF * 2  # the compatibility synthesize, spoken once


# ---------------------------------------------------------------------------------- voices and languages
async def test_a_german_pipeline_gets_german_speech_from_the_voice_picker(server):
    uri, log = server
    ha = HomeAssistantLike(uri)
    await ha.setup()
    german = dict(ha.voices["de"])
    assert german["vivian-de"] == "vivian (German, built-in speaker)"
    assert german["vivian"] == "vivian (any language, built-in speaker)"
    assert "vivian-en" not in german and all(shown.startswith(voice.split("-")[0]) for voice, shown in german.items())
    picked = await ha_speak(ha, ["Wie geht es dir?"], voice="vivian-de")
    assert picked.ended_by == "synthesize-stopped" and len(picked.audio) == SENTENCE_FRAMES * SPF * 2
    # what the engine was asked for (the server's --debug log)
    assert "synthesizing 'Wie geht es dir?' with {'speaker': 'vivian', 'language': 'german'}" in log_text(log)


async def test_a_remembered_voice_that_is_gone_is_spoken_with_the_default_voice(server):
    uri, log = server
    ha = HomeAssistantLike(uri)
    await ha.setup()
    ha.voices["en"].append(("anna", "anna (cloned voice)"))  # from before the voices folder changed
    for _ in range(2):
        spoken = await ha_speak(ha, ["Remember me."], voice="anna")
        assert spoken.ended_by == "synthesize-stopped" and "error" not in spoken.events
        assert len(spoken.audio) == SENTENCE_FRAMES * SPF * 2
    assert log_text(log).count("unknown voice 'anna'") == 1  # warned once per name
    # spoken with the default voice (the first speaker)
    assert log_text(log).count("synthesizing 'Remember me.' with {'speaker': 'vivian', 'language': 'auto'}") == 2


async def test_an_unknown_language_falls_back_to_auto(server):
    uri, log = server
    # (wyoming's SynthesizeVoice leaves out the language when it has a name: the event is written by hand)
    events = await raw_request(uri, Event(type="synthesize", data={
        "text": "Hello, world.", "voice": {"name": "vivian", "language": "tlh"}}), until="audio-stop")
    assert types(events) == ["audio-start", "audio-chunk", "audio-stop"]
    assert "unknown language 'tlh'" in log_text(log)
    assert "synthesizing 'Hello, world.' with {'speaker': 'vivian', 'language': 'auto'}" in log_text(log)


# -------------------------------------------------------------------------------- no request left waiting
async def test_an_error_answering_a_one_shot_request_closes_the_connection(server):
    uri, _ = server
    ha = HomeAssistantLike(uri, streaming_client=False)
    await ha.setup()
    spoken = await ha_speak(ha, ["   "])  # nothing to say: an error, which Home Assistant ignores
    assert spoken.ended_by == "closed" and spoken.events == ["error"]


@pytest.mark.parametrize("voice", [{"name": 5}, {"name": ["vivian"]}, {"language": ["de"]}, "vivian"])
async def test_a_rejected_synthesize_start_leaves_no_half_open_stream(server, voice):
    uri, log = server
    events = await raw_request(uri, Event(type="synthesize-start", data={"voice": voice}),
                               Synthesize(text="Hello.").event())
    # the stream ends with its synthesize-stopped, nothing follows, and the connection closes
    assert types(events) == ["error", "synthesize-stopped", "closed"], events
    assert "Traceback" not in log_text(log)


@pytest.mark.parametrize("data", [{"text": "Hi.", "voice": {"name": 5}}, {"text": "Hi.", "voice": {"name": []}},
                                  {"text": "Hi.", "voice": {"language": ["en"]}}, {"text": 7},
                                  {"text": "Hi.", "text_format": {}}])
async def test_wrong_typed_fields_get_an_error_not_a_traceback(server, data):
    uri, log = server
    events = await raw_request(uri, Event(type="synthesize", data=data))
    assert types(events) == ["error", "closed"] and "must be" in events[0].data["text"]
    assert "Traceback" not in log_text(log)


def test_deeply_nested_json_gets_an_error_not_a_traceback(server):
    uri, log = server
    nested = "[" * 20_000 + "]" * 20_000  # 40 kB
    host, port = uri.removeprefix("tcp://").split(":")
    for raw in (f'{{"type": "synthesize", "data": {{"text": {nested}}}}}\n'.encode(),
                json.dumps({"type": "synthesize", "data_length": len(nested) + 7}).encode() + b"\n"
                + f'{{"x": {nested}}}'.encode()):
        with socket.create_connection((host, int(port)), timeout=HANG_S) as s:
            s.sendall(raw)
            reply = s.makefile("rb").readline()
        header = json.loads(reply)
        assert header["type"] == "error", header
    assert "Traceback" not in log_text(log) and "RecursionError" not in log_text(log)


async def test_a_second_synthesize_start_finishes_the_open_stream_first(server):
    uri, _ = server
    events = await raw_request(uri, SynthesizeStart().event(), SynthesizeChunk(text="Hello there. And th").event(),
                               SynthesizeStart().event(), SynthesizeChunk(text="Bye.").event(),
                               SynthesizeStop().event(), until="synthesize-stopped", times=2)
    # "Hello there." as soon as complete, then "And th" (not dropped) and the first stream's end, then the second
    assert types(events) == ["audio-start", "audio-chunk", "audio-stop"] * 2 + ["synthesize-stopped"] + [
        "audio-start", "audio-chunk", "audio-stop", "synthesize-stopped"]


async def test_synthesize_stop_without_a_stream_is_answered(server):
    uri, _ = server
    async with AsyncTcpClient.from_uri(uri) as client:
        await client.write_event(SynthesizeStop().event())
        reply = await asyncio.wait_for(client.read_event(), HANG_S)
    assert SynthesizeStopped.is_type(reply.type)


# ------------------------------------------------------------------------------------- bounded audio
async def test_pauses_beyond_the_audio_limit_are_refused_before_any_audio(server):
    uri, _ = server
    ssml = "<speak>" + '<break time="10s"/>x' * 450 + "</speak>"  # 75 minutes of pauses asked for in 10 kB
    events = await raw_request(uri, Synthesize(text=ssml, text_format="ssml").event())
    assert types(events) == ["error", "closed"] and "at most 3 s of audio" in events[0].data["text"]


async def test_a_request_stops_at_the_audio_limit_with_an_error_and_its_end_events(server):
    uri, _ = server
    text = " ".join(f"Sentence number {i} is here." for i in range(20))  # 20 sentences, 6.4 s of audio
    one_shot = await raw_request(uri, Synthesize(text=text).event())
    assert types(one_shot) == ["audio-start", "audio-chunk", "error", "audio-stop", "closed"]
    samples = sum(len(AudioChunk.from_event(e).audio) // 2 for e in one_shot if e and AudioChunk.is_type(e.type))
    assert samples == int(MAX_AUDIO_S * 24000) and "audio-seconds" in one_shot[-3].data["text"]

    ha = HomeAssistantLike(uri)
    await ha.setup()
    streamed = await ha_speak(ha, [f"Sentence number {i} is here. " for i in range(20)])
    assert streamed.ended_by == "synthesize-stopped" and len(streamed.audio) == int(MAX_AUDIO_S * 24000) * 2
    assert collapse(streamed.events)[-3:] == ["error", "audio-stop", "synthesize-stopped"]
