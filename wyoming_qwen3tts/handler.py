"""Wyoming event handler: maps a client's events to synthesis work and streams the audio back.

Event flows (as the wyoming package and Home Assistant's wyoming integration expect them):

* ``describe`` -> ``info``
* ``synthesize`` -> ``audio-start``, ``audio-chunk``... (every sentence, frame by frame as generated), ``audio-stop``
* ``synthesize-start`` -> ``synthesize-chunk``... [-> ``synthesize`` (compatibility copy, ignored)] ->
  ``synthesize-stop``; each sentence is spoken as soon as it is complete, as its own ``audio-start`` /
  ``audio-chunk``... / ``audio-stop``; after the last one, ``synthesize-stopped``.

Bad input (unknown voice or language, empty or too long text, invalid SSML, unknown event types) is answered
with an ``error`` event and the connection stays usable; a malformed event ends the connection after an
``error``. A client that disconnects or stops reading cancels its synthesis before the next frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice

from .protocol import Limits, ProtocolError, read_event
from .text import Segment, SentenceStream, prepare
from .voices import Voice, voice_request
from .worker import EngineWorker

_LOGGER = logging.getLogger(__name__)

SAMPLE_WIDTH = 2  # 16-bit PCM
CHANNELS = 1
SEND_BUFFER_BYTES = 256 * 1024


@dataclass
class ServerSettings:
    sample_rate: int = 24000
    default_voice: str | None = None
    default_language: str | None = None
    samples_per_chunk: int = 1024
    streaming: bool = True
    max_text_chars: int = 10_000
    write_timeout_s: float = 30.0
    generation: dict[str, Any] = field(default_factory=dict)  # sampling options and max_frames for every request
    limits: Limits = field(default_factory=Limits)


class ClientGone(Exception):
    """The client disconnected or stopped reading: stop working for it."""


class Qwen3TtsEventHandler(AsyncEventHandler):
    def __init__(self, info: Info, settings: ServerSettings, worker: EngineWorker, voices: dict[str, Voice],
                 model_languages: list[str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.info = info
        self.settings = settings
        self.worker = worker
        self.voices = voices
        self.model_languages = model_languages
        self._stream: _TextStream | None = None  # an open synthesize-start ... synthesize-stop
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # A bounded kernel send buffer (~5 s of audio) instead of autotuned megabytes: a client that stops
            # reading is noticed (write timeout) after seconds, and the engine pauses instead of racing ahead.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)

    # ------------------------------------------------------------------------------------------- plumbing
    async def run(self) -> None:
        """Like AsyncEventHandler.run, but reads with limits and answers malformed input with an error."""
        try:
            while True:
                try:
                    event = await read_event(self.reader, self.settings.limits)
                except ProtocolError as e:
                    _LOGGER.warning("closing connection: %s", e)
                    with contextlib.suppress(Exception):
                        await self._send(Error(text=str(e), code="protocol-error").event())
                    break
                if event is None or not await self.handle_event(event):
                    break
        except (ConnectionError, ClientGone) as e:
            _LOGGER.info("client went away: %s", e or type(e).__name__)
        finally:
            self.writer.close()

    async def _send(self, event: Event) -> None:
        if self.writer.is_closing():
            raise ClientGone("connection closed")
        try:
            await asyncio.wait_for(self.write_event(event), self.settings.write_timeout_s)
        except asyncio.TimeoutError:
            raise ClientGone(f"not reading for {self.settings.write_timeout_s:g} s") from None
        except ConnectionError as e:
            raise ClientGone(str(e) or type(e).__name__) from None

    async def _error(self, text: str, code: str) -> None:
        _LOGGER.warning("request rejected: %s", text)
        await self._send(Error(text=text, code=code).event())

    # --------------------------------------------------------------------------------------------- events
    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self._send(self.info.event())
            return True
        if Ping.is_type(event.type):
            await self._send(Pong(text=Ping.from_event(event).text).event())
            return True
        try:
            if Synthesize.is_type(event.type):
                if self._stream is not None:
                    return True  # the compatibility copy of a streamed text: already being spoken
                await self._synthesize(Synthesize.from_event(event))
            elif SynthesizeStart.is_type(event.type):
                await self._stream_start(SynthesizeStart.from_event(event))
            elif SynthesizeChunk.is_type(event.type):
                await self._stream_chunk(SynthesizeChunk.from_event(event))
            elif SynthesizeStop.is_type(event.type):
                await self._stream_stop()
            else:
                await self._error(f"unsupported event type {event.type!r}", "unsupported-event")
        except ValueError as e:  # bad request content: the connection stays usable
            await self._error(str(e), "invalid-request")
        except (KeyError, TypeError) as e:  # an event missing its fields
            await self._error(f"malformed {event.type} event: {e!r}", "invalid-request")
        return True

    async def _synthesize(self, request: Synthesize) -> None:
        segments = prepare(request.text, _text_format(request.text_format), self.settings.max_text_chars)
        voice = self._voice_request(request.voice)
        await self._send(AudioStart(rate=self.settings.sample_rate, width=SAMPLE_WIDTH, channels=CHANNELS).event())
        clock = _AudioClock(self.settings.sample_rate)
        for segment in segments:
            await self._speak(segment, voice, clock)
        await self._send(AudioStop(timestamp=clock.ms).event())

    async def _stream_start(self, start: SynthesizeStart) -> None:
        if not self.settings.streaming:
            raise ValueError("text streaming is disabled on this server (--no-streaming); send 'synthesize'")
        fmt = _text_format(start.text_format)
        self._stream = _TextStream(voice=start.voice, ssml=fmt == "ssml", clock=_AudioClock(self.settings.sample_rate))
        self._voice_request(start.voice)  # reject an unknown voice or language now, not after the first sentence
        _LOGGER.debug("text stream started: voice=%s", start.voice)

    async def _stream_chunk(self, chunk: SynthesizeChunk) -> None:
        stream = self._require_stream()
        stream.chars += len(chunk.text)
        if stream.chars > self.settings.max_text_chars:
            raise ValueError(f"text is too long: more than {self.settings.max_text_chars} characters streamed")
        if stream.ssml:
            stream.ssml_text.append(chunk.text)  # markup can only be parsed once it is complete
            return
        for sentence in stream.sentences.add(chunk.text):
            await self._stream_sentence(stream, sentence)

    async def _stream_stop(self) -> None:
        stream = self._require_stream()
        self._stream = None
        try:
            if stream.ssml:
                text = "".join(stream.ssml_text)
                if text.strip():
                    segments = prepare(text, "ssml", self.settings.max_text_chars)
                    await self._speak_block(segments, stream)
            else:
                for sentence in stream.sentences.finish():
                    await self._stream_sentence(stream, sentence)
        finally:
            await self._send(SynthesizeStopped().event())
        _LOGGER.debug("text stream stopped")

    async def _stream_sentence(self, stream: "_TextStream", sentence: str) -> None:
        # SentenceStream already cleaned and split the text: speak its sentence as it is.
        await self._speak_block([Segment(text=sentence)], stream)

    async def _speak_block(self, segments: list[Segment], stream: "_TextStream") -> None:
        voice = self._voice_request(stream.voice)
        await self._send(AudioStart(rate=self.settings.sample_rate, width=SAMPLE_WIDTH, channels=CHANNELS).event())
        for segment in segments:
            await self._speak(segment, voice, stream.clock)
        await self._send(AudioStop(timestamp=stream.clock.ms).event())

    def _require_stream(self) -> "_TextStream":
        if self._stream is None:
            raise ValueError("synthesize-chunk/stop without synthesize-start")
        return self._stream

    # ---------------------------------------------------------------------------------------------- audio
    def _voice_request(self, voice: SynthesizeVoice | None) -> dict[str, Any]:
        return voice_request(self.voices, self.model_languages, voice.name if voice else None,
                             voice.language if voice else None, self.settings.default_voice,
                             self.settings.default_language)

    async def _speak(self, segment: Segment, voice: dict[str, Any], clock: "_AudioClock") -> None:
        if segment.text is None:
            await self._send_pcm(np.zeros(int(round(segment.silence_s * self.settings.sample_rate)), np.float32), clock)
            return
        request = {**self.settings.generation, **voice, "text": segment.text}
        _LOGGER.debug("synthesizing %r with %s", segment.text, voice)
        frames = 0
        stream = self.worker.stream(request)
        try:
            async for pcm in stream:
                frames += 1
                await self._send_pcm(pcm, clock)
        except ClientGone:
            _LOGGER.info("client went away: synthesis cancelled after %d frames", frames)
            raise
        finally:
            await stream.aclose()

    async def _send_pcm(self, pcm: np.ndarray, clock: "_AudioClock") -> None:
        audio = (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2")
        step = self.settings.samples_per_chunk
        for i in range(0, len(audio), step):
            piece = audio[i:i + step]
            await self._send(AudioChunk(rate=self.settings.sample_rate, width=SAMPLE_WIDTH, channels=CHANNELS,
                                        audio=piece.tobytes(), timestamp=clock.ms).event())
            clock.advance(len(piece))


class _AudioClock:
    """Milliseconds of audio sent so far in one audio stream (the audio-chunk timestamps)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.samples = 0

    @property
    def ms(self) -> int:
        return self.samples * 1000 // self.rate

    def advance(self, n: int) -> None:
        self.samples += n


@dataclass
class _TextStream:
    voice: SynthesizeVoice | None
    ssml: bool
    clock: _AudioClock
    sentences: SentenceStream = field(default_factory=SentenceStream)
    ssml_text: list[str] = field(default_factory=list)
    chars: int = 0


def _text_format(value: Any) -> str | None:
    return getattr(value, "value", value)
