"""Wyoming event handler: maps a client's events to synthesis work and streams the audio back.

Event flows (as the wyoming package and Home Assistant's wyoming integration expect them):

* ``describe`` -> ``info``
* ``synthesize`` -> ``audio-start``, ``audio-chunk``... (every sentence, frame by frame as generated), ``audio-stop``
* ``synthesize-start`` -> ``synthesize-chunk``... [-> ``synthesize`` (compatibility copy, ignored)] ->
  ``synthesize-stop``; each sentence is spoken as soon as it is complete, as its own ``audio-start`` /
  ``audio-chunk``... / ``audio-stop``; after the last one, ``synthesize-stopped`` (exactly one per stream).
  With streaming off (``--no-streaming``) a client that read ``info`` before is still answered: the
  compatibility ``synthesize`` (or else the streamed text, at ``synthesize-stop``) is spoken as one block.

Home Assistant ignores ``error`` events and waits without a timeout for ``audio-stop`` (one-shot) or
``synthesize-stopped`` (stream), or for the connection to close. So a request that cannot be served gets an
``error``, then the end events its audio and its stream are waiting for, and then the connection is closed; a
voice or language the server does not know (Home Assistant remembers names from its last reload) is replaced by
the default instead of failing. Malformed events end the connection after an ``error`` too. A client that
disconnects, stops reading or falls far behind real time has its synthesis stopped; it never holds up others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import numpy as np
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler
from wyoming.tts import SynthesizeStopped, SynthesizeVoice

from ._native import _engine
from .audio_events import audio_chunks, audio_start, audio_stop, pcm16
from .protocol import IdleTimeout, Limits, ProtocolError, read_event
from .request import InvalidRequest, SynthesisRequest
from .text import Segment, SentenceStream, prepare
from .voices import Voice, voice_request
from .worker import ConsumerTooSlow, EngineWorker

_LOGGER = logging.getLogger(__name__)

SEND_BUFFER_BYTES = 256 * 1024
DEFAULT_MAX_AUDIO_S = 900.0  # 15 minutes: what 10 000 characters of ordinary speech take, with room to spare
DEFAULT_MAX_CONNECTIONS = 64
LINGER_S = 2.0  # how long a connection the server ends is drained (see _linger)


class ConnectionLimit:
    """Open connections, shared by every handler of a server; beyond ``maximum`` new ones are refused."""

    def __init__(self, maximum: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self.maximum = maximum
        self.open = 0

    def acquire(self) -> bool:
        if self.open >= self.maximum:
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


class RateLimitFilter(logging.Filter):
    """Lets through at most ``burst`` records of one message per ``period_s`` seconds (DEBUG records always pass),
    so that clients cannot flood the log (a thousand refused connections, a stream of bad requests); the next
    record let through tells how many were left out."""

    def __init__(self, burst: int = 10, period_s: float = 10.0) -> None:
        super().__init__()
        self.burst = burst
        self.period_s = period_s
        self._windows: dict[tuple[str, str], list[float]] = {}  # (logger, message) -> [start, passed, left out]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.period_s:
            if window is not None and window[2] and isinstance(record.args, tuple):
                record.msg = f"{record.msg} (and %d more like it in the last %.0f s)"
                record.args = (*record.args, int(window[2]), now - window[0])
            if len(self._windows) >= 1000:  # messages are the code's, but stay bounded anyway
                self._windows.clear()
            window = self._windows[key] = [now, 0, 0]
        if window[1] < self.burst:
            window[1] += 1
            return True
        window[2] += 1
        return False


@dataclass
class ServerSettings:
    sample_rate: int = 24000
    default_voice: str | None = None
    default_language: str | None = None
    samples_per_chunk: int = 1024
    streaming: bool = True
    max_text_chars: int = 10_000
    max_audio_s: float = DEFAULT_MAX_AUDIO_S  # audio one request (a synthesize or a whole text stream) may produce
    write_timeout_s: float = 30.0
    generation: dict[str, Any] = field(default_factory=dict)  # sampling options and max_frames for every request
    limits: Limits = field(default_factory=Limits)
    connections: ConnectionLimit = field(default_factory=ConnectionLimit)

    def request(self, text: str, voice: dict[str, Any]) -> SynthesisRequest:
        """The request for one sentence: the server's sampling options, then the voice's fields (voice_request)."""
        return SynthesisRequest(**{**self.generation, **voice, "text": text})


class ClientGone(Exception):
    """The client disconnected or stopped reading: stop working for it."""


class AudioLimitExceeded(InvalidRequest):
    """The request's audio reached ``max_audio_s``."""


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
        self._audio: _AudioClock | None = None  # the audio stream between audio-start and audio-stop, if any
        self._requests: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "synthesize": self._on_synthesize,
            "synthesize-start": self._on_stream_start,
            "synthesize-chunk": self._on_stream_chunk,
            "synthesize-stop": self._on_stream_stop,
        }
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # A bounded kernel send buffer (~5 s of audio) instead of autotuned megabytes: a client that stops
            # reading is noticed (write timeout, lag behind real time) after seconds.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)

    # ------------------------------------------------------------------------------------------- plumbing
    async def run(self) -> None:
        """Like AsyncEventHandler.run, but reads with limits and timeouts, and answers malformed input with an
        error. Beyond the connection limit the client gets an error and the connection is closed."""
        connections = self.settings.connections
        if not connections.acquire():
            _LOGGER.warning("refused a connection: %d connections open (--max-connections)", connections.maximum)
            with contextlib.suppress(Exception):
                await self._send(Error(text=f"server busy: {connections.maximum} connections are open; try again "
                                       "later", code="too-many-connections").event())
            self.writer.close()
            return
        try:
            await self._serve()
        except (ConnectionError, ClientGone) as e:
            _LOGGER.info("client went away: %s", e or type(e).__name__)
        finally:
            connections.release()
            self.writer.close()

    async def _serve(self) -> None:
        while True:
            try:
                event = await read_event(self.reader, self.settings.limits)
            except ProtocolError as e:
                _LOGGER.warning("closing connection: %s", e)
                with contextlib.suppress(Exception):
                    await self._send(Error(text=str(e), code="protocol-error").event())
                await self._linger()
                return
            except IdleTimeout as e:
                _LOGGER.debug("closing connection: %s", e)
                return
            if event is None:
                return
            if not await self.handle_event(event):
                await self._linger()
                return

    async def _linger(self) -> None:
        """Before the server closes a connection: end our side first and discard what the client still sends, for
        a moment. Closing a socket with unread input resets the connection, and the client would lose the error
        and end events still on their way to it."""
        async def discard() -> None:
            while await self.reader.read(1 << 16):
                pass

        with contextlib.suppress(Exception):
            if self.writer.can_write_eof():
                self.writer.write_eof()
            await asyncio.wait_for(discard(), LINGER_S)

    async def _send(self, event: Event) -> None:
        if self.writer.is_closing():
            raise ClientGone("connection closed")
        try:
            await asyncio.wait_for(self.write_event(event), self.settings.write_timeout_s)
        except asyncio.TimeoutError:
            raise ClientGone(f"not reading for {self.settings.write_timeout_s:g} s") from None
        except ConnectionError as e:
            raise ClientGone(str(e) or type(e).__name__) from None

    # --------------------------------------------------------------------------------------------- events
    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self._send(self.info.event())
            return True
        if Ping.is_type(event.type):
            text = event.data.get("text")
            await self._send(Pong(text=text if isinstance(text, str) else None).event())
            return True
        request = self._requests.get(event.type)
        if request is None:  # nothing waits for an answer beyond the error: the connection stays usable
            _LOGGER.warning("unsupported event type %r", event.type)
            await self._send(Error(text=f"unsupported event type {event.type!r}", code="unsupported-event").event())
            return True
        try:
            await request(event.data)
        except ClientGone:
            raise
        except Exception as e:  # noqa: BLE001 - every failure of a request is answered, none kills the handler
            await self._fail(event.type, e)
            return False
        return True

    async def _fail(self, event_type: str, e: Exception) -> None:
        """Answer a failed request: an error, then the end events the client is waiting for (it may ignore the
        error); the connection is closed afterwards. Only InvalidRequest is the client's fault; any other
        exception is the server's, reported as an internal error and logged with its traceback."""
        if isinstance(e, InvalidRequest):
            text, code = str(e), ("audio-limit" if isinstance(e, AudioLimitExceeded) else "invalid-request")
            _LOGGER.warning("%s rejected: %s", event_type, text)
        elif isinstance(e, _engine.EngineError):
            text, code = f"synthesis failed: {e}", "synthesis-failed"
            _LOGGER.error("%s failed in the engine: %s", event_type, e)
        else:
            text, code = f"internal error: {e!r}", "internal-error"
            _LOGGER.error("%s failed with an internal error: %r", event_type, e, exc_info=e)
        await self._send(Error(text=text, code=code).event())
        if self._audio is not None:
            await self._end_audio()
        if self._stream is not None:
            self._stream = None
            await self._send(SynthesizeStopped().event())

    async def _on_synthesize(self, data: dict[str, Any]) -> None:
        stream = self._stream
        if stream is not None and stream.streaming:
            return  # the compatibility copy of a streamed text: already being spoken
        text = _text(data, "synthesize")
        voice = _voice(data) or (stream.voice if stream else None)
        segments = prepare(text, _text_format(data), self.settings.max_text_chars)
        if stream is not None:
            stream.spoken = True  # streaming off: this copy is the stream's text
        await self._speak_block(segments, self._voice_request(voice), self._new_clock())

    async def _on_stream_start(self, data: dict[str, Any]) -> None:
        if self._stream is not None:
            _LOGGER.warning("synthesize-start while a text stream is open: finishing the open one first")
            await self._on_stream_stop({})
        # Even a rejected start ends with synthesize-stopped: the stream exists from here on.
        stream = self._stream = _TextStream(clock=self._new_clock(), streaming=self.settings.streaming)
        stream.voice = _voice(data)
        stream.ssml = _text_format(data) == "ssml"
        self._voice_request(stream.voice)  # bad fields fail now; a stale voice is warned about now
        _LOGGER.debug("text stream started: voice=%s", stream.voice)

    async def _on_stream_chunk(self, data: dict[str, Any]) -> None:
        stream = self._stream
        if stream is None:
            raise InvalidRequest("synthesize-chunk without synthesize-start")
        text = _text(data, "synthesize-chunk")
        stream.chars += len(text)
        if stream.chars > self.settings.max_text_chars:
            raise InvalidRequest(f"text is too long: more than {self.settings.max_text_chars} characters streamed")
        if stream.buffered_only:
            stream.buffer.append(text)  # markup can only be parsed once it is complete; or streaming is off
            return
        for sentence in stream.sentences.add(text):
            # SentenceStream already cleaned and split the text: speak its sentence as it is.
            await self._speak_block([Segment(text=sentence)], self._voice_request(stream.voice), stream.clock)

    async def _on_stream_stop(self, data: dict[str, Any]) -> None:
        stream = self._stream
        if stream is None:  # nothing open: nothing to speak, and the client waits for this answer
            await self._send(SynthesizeStopped().event())
            return
        if stream.buffered_only:
            text = "".join(stream.buffer)
            if not stream.spoken and text.strip():
                segments = prepare(text, "ssml" if stream.ssml else None, self.settings.max_text_chars)
                await self._speak_block(segments, self._voice_request(stream.voice), stream.clock)
        else:
            for sentence in stream.sentences.finish():
                await self._speak_block([Segment(text=sentence)], self._voice_request(stream.voice), stream.clock)
        self._stream = None
        await self._send(SynthesizeStopped().event())
        _LOGGER.debug("text stream stopped")

    # ---------------------------------------------------------------------------------------------- audio
    def _voice_request(self, voice: SynthesizeVoice | None) -> dict[str, Any]:
        return voice_request(self.voices, self.model_languages, voice.name if voice else None,
                             voice.language if voice else None, self.settings.default_voice,
                             self.settings.default_language, fallback=True)

    def _new_clock(self) -> "_AudioClock":
        return _AudioClock(self.settings.sample_rate, int(self.settings.max_audio_s * self.settings.sample_rate))

    async def _speak_block(self, segments: list[Segment], voice: dict[str, Any], clock: "_AudioClock") -> None:
        """One audio stream (audio-start ... audio-stop) of the segments."""
        pauses_s = sum(s.silence_s for s in segments if s.silence_s is not None)
        if clock.samples + pauses_s * clock.rate > clock.limit:
            raise AudioLimitExceeded(f"the text asks for {pauses_s:.0f} s of pauses; a request may produce at most "
                                     f"{clock.limit / clock.rate:g} s of audio (--max-audio-seconds)")
        await self._send(audio_start(self.settings.sample_rate))
        self._audio = clock
        for segment in segments:
            await self._speak(segment, voice, clock)
        await self._end_audio()

    async def _end_audio(self) -> None:
        clock, self._audio = self._audio, None
        await self._send(audio_stop(clock.samples if clock else None, self.settings.sample_rate))

    async def _speak(self, segment: Segment, voice: dict[str, Any], clock: "_AudioClock") -> None:
        if segment.text is None:
            await self._send_pcm(np.zeros(int(round(segment.silence_s * self.settings.sample_rate)), np.float32), clock)
            return
        request = self.settings.request(segment.text, voice)
        _LOGGER.debug("synthesizing %r with %s", segment.text, voice)
        frames = 0
        stream = self.worker.stream(request)
        try:
            async for pcm in stream:
                frames += 1
                await self._send_pcm(pcm, clock)
        except ConsumerTooSlow as e:
            raise ClientGone(f"the client fell behind: {e}") from None
        except ClientGone:
            _LOGGER.info("client went away: synthesis cancelled after %d chunks", frames)
            raise
        finally:
            await stream.aclose()

    async def _send_pcm(self, pcm: np.ndarray, clock: "_AudioClock") -> None:
        room = clock.limit - clock.samples
        for chunk in audio_chunks(pcm16(pcm[:room]), clock.rate, self.settings.samples_per_chunk, clock.samples):
            await self._send(chunk.event())
            clock.advance(chunk.samples)
        if len(pcm) > room:
            raise AudioLimitExceeded(f"the request's audio reached the limit of {clock.limit / clock.rate:g} s "
                                     "(--max-audio-seconds); the rest of the text is not spoken")


class _AudioClock:
    """Samples of audio sent so far for one request (the audio-chunk timestamps), and the most it may send."""

    def __init__(self, rate: int, limit: int) -> None:
        self.rate = rate
        self.limit = limit
        self.samples = 0

    def advance(self, n: int) -> None:
        self.samples += n


@dataclass
class _TextStream:
    clock: _AudioClock
    streaming: bool                       # False: the server does not stream text; the text is spoken as a block
    voice: SynthesizeVoice | None = None
    ssml: bool = False
    sentences: SentenceStream = field(default_factory=SentenceStream)
    buffer: list[str] = field(default_factory=list)
    chars: int = 0
    spoken: bool = False                  # streaming off: the compatibility synthesize has been spoken

    @property
    def buffered_only(self) -> bool:
        """The text is spoken only when complete: SSML (markup), or streaming turned off."""
        return self.ssml or not self.streaming


# ---------------------------------------------------------------------------------------------- event fields
def _string(data: dict[str, Any], key: str, what: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"'{what}' must be a string, not {type(value).__name__}")
    return value


def _text(data: dict[str, Any], event_type: str) -> str:
    text = _string(data, "text", "text")
    if text is None:
        raise InvalidRequest(f"malformed {event_type} event: 'text' is missing")
    return text


def _voice(data: dict[str, Any]) -> SynthesizeVoice | None:
    voice = data.get("voice")
    if voice is None:
        return None
    if not isinstance(voice, dict):
        raise InvalidRequest(f"'voice' must be an object, not {type(voice).__name__}")
    return SynthesizeVoice(**{key: _string(voice, key, f"voice.{key}") for key in ("name", "language", "speaker")})


def _text_format(data: dict[str, Any]) -> str | None:
    return _string(data, "text_format", "text_format")
