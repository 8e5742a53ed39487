"""The audio the server hands out: 16-bit mono PCM, and the Wyoming events that carry it.

One conversion from the engine's float samples and one way to cut them into ``audio-chunk`` events, for every
output: Wyoming clients (:mod:`.handler`), MQTT announcement sinks (:mod:`.mqtt`) and the command line
(:mod:`.synth`) hand out the same samples.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event

SAMPLE_WIDTH = 2  # 16-bit PCM
CHANNELS = 1


def pcm16(audio: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> little-endian int16: clipped to [-1, 1], scaled by 32767, rounded half to even."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")


def timestamp_ms(samples: int, rate: int) -> int:
    """The Wyoming timestamp (whole milliseconds, rounded down) of a position ``samples`` into the audio."""
    return samples * 1000 // rate


def audio_start(rate: int) -> Event:
    return AudioStart(rate=rate, width=SAMPLE_WIDTH, channels=CHANNELS).event()


def audio_stop(samples: int | None, rate: int) -> Event:
    """``audio-stop`` after ``samples`` samples (None: without a timestamp)."""
    return AudioStop(timestamp=None if samples is None else timestamp_ms(samples, rate)).event()


def audio_chunks(audio: np.ndarray, rate: int, samples_per_chunk: int, start_sample: int = 0) -> Iterator[AudioChunk]:
    """``audio`` (int16, as :func:`pcm16` makes it) as ``audio-chunk`` events of ``samples_per_chunk`` samples,
    the last one shorter where the samples do not divide evenly; each is timestamped with its position in the
    stream, which is ``start_sample`` samples in at the first one. ``.samples`` of each chunk says how far it
    moves the stream on."""
    step = max(1, samples_per_chunk)
    for i in range(0, len(audio), step):
        yield AudioChunk(rate=rate, width=SAMPLE_WIDTH, channels=CHANNELS, audio=audio[i:i + step].tobytes(),
                         timestamp=timestamp_ms(start_sample + i, rate))
