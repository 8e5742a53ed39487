"""The one float -> int16 conversion and the one audio-chunk emitter that every output uses."""

import numpy as np
import pytest
from wyoming.audio import AudioChunk, AudioStart, AudioStop

from wyoming_qwen3tts.audio_events import audio_chunks, audio_start, audio_stop, pcm16


def test_pcm16_clips_at_plus_minus_one_and_rounds_to_nearest():
    audio = np.array([-2.0, -1.0, -0.5, 0.0, 1.5 / 32767, 2.5 / 32767, 0.25, 1.0, 3.0, np.float32(1e-6)],
                     dtype=np.float32)
    out = pcm16(audio)
    assert out.dtype == np.dtype("<i2")
    # 1.5 and 2.5 round half to even (numpy's round): 2 and 2; 0.25 * 32767 = 8191.75 -> 8192
    assert out.tolist() == [-32767, -32767, -16384, 0, 2, 2, 8192, 32767, 32767, 0]


def test_chunks_have_the_fixed_size_and_a_shorter_last_one():
    audio = np.arange(10, dtype="<i2")
    chunks = list(audio_chunks(audio, rate=1000, samples_per_chunk=4))
    assert [c.samples for c in chunks] == [4, 4, 2]
    assert b"".join(c.audio for c in chunks) == audio.tobytes()
    assert chunks[1].audio == np.arange(4, 8, dtype="<i2").tobytes()
    assert [(c.rate, c.width, c.channels) for c in chunks] == [(1000, 2, 1)] * 3


def test_chunks_that_divide_evenly_have_no_empty_tail():
    chunks = list(audio_chunks(np.zeros(8, "<i2"), rate=1000, samples_per_chunk=4))
    assert [c.samples for c in chunks] == [4, 4]
    assert list(audio_chunks(np.zeros(0, "<i2"), rate=1000, samples_per_chunk=4)) == []


def test_chunk_timestamps_count_from_the_start_sample_in_whole_ms():
    chunks = list(audio_chunks(np.zeros(5000, "<i2"), rate=24000, samples_per_chunk=1024, start_sample=100))
    # (100 + i * 1024) * 1000 // 24000
    assert [c.timestamp for c in chunks] == [4, 46, 89, 132, 174]
    event = chunks[0].event()
    assert AudioChunk.is_type(event.type) and event.payload == chunks[0].audio


def test_start_and_stop_events():
    start = AudioStart.from_event(audio_start(24000))
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    assert AudioStop.from_event(audio_stop(36000, 24000)).timestamp == 1500
    assert AudioStop.from_event(audio_stop(None, 24000)).timestamp is None


@pytest.mark.parametrize("step", [1, 3, 1024])
def test_chunks_put_back_together_are_the_converted_audio(step):
    rng = np.random.default_rng(0)
    audio = pcm16(rng.uniform(-1.2, 1.2, 2000).astype(np.float32))
    chunks = list(audio_chunks(audio, 24000, step))
    assert np.array_equal(np.frombuffer(b"".join(c.audio for c in chunks), "<i2"), audio)
    assert all(c.samples == step for c in chunks[:-1]) and 0 < chunks[-1].samples <= step
