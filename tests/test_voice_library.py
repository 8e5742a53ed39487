"""The voice library and its prompt cache, on the tiny Base fixture (speaker encoder + codec encoder)."""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import pytest
import soundfile
from safetensors.numpy import load_file

from wyoming_qwen3tts.voice_library import VoiceLibrary
from wyoming_qwen3tts.voices import library_voices

from helpers import FIXTURES


@pytest.fixture
def ref_wav():
    return load_file(str(FIXTURES / "tiny-17" / "oracle.safetensors"))["ref_wav"]


@pytest.fixture
def voices_dir(tmp_path, ref_wav):
    root = tmp_path / "voices"
    (root / "anna").mkdir(parents=True)
    soundfile.write(root / "anna" / "ref.wav", ref_wav, 24000, subtype="FLOAT")
    (root / "anna" / "ref.txt").write_text("Hello there, this is Anna.")
    (root / "bert").mkdir()
    soundfile.write(root / "bert" / "ref.wav", ref_wav[::-1].copy(), 24000, subtype="FLOAT")
    (root / "bert" / "voice.json").write_text('{"languages": ["de", "en"], "description": "Bert, deep"}')
    (root / "designed").mkdir()
    (root / "designed" / "instruct.txt").write_text("A cheerful young woman.")
    (root / "bad name!").mkdir()
    (root / "empty").mkdir()
    return root


class Counting:
    """Counts the encoder passes of a Qwen3TTS (wrapping, not replacing, the real ones)."""

    def __init__(self, tts, monkeypatch, delay_s=0.0):
        self.calls = 0
        self._lock = threading.Lock()
        real = tts.speaker_embedding

        def counted(wav, sr):
            with self._lock:
                self.calls += 1
            if delay_s:
                threading.Event().wait(delay_s)
            return real(wav, sr)

        monkeypatch.setattr(tts, "speaker_embedding", counted)


def test_scan_modes_and_skips(tts, voices_dir, caplog):
    with caplog.at_level(logging.WARNING):
        voices = VoiceLibrary(voices_dir, tts).scan()
    assert {n: v.mode for n, v in voices.items()} == {"anna": "icl", "bert": "xvector"}
    assert voices["bert"].languages == ["de", "en"] and voices["bert"].description == "Bert, deep"
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "designed voices need a VoiceDesign model" in messages
    assert "letters, digits" in messages and "neither ref.wav" in messages


def test_prompts_match_the_encoders(tts, voices_dir, ref_wav):
    lib = VoiceLibrary(voices_dir, tts, cache_dir=voices_dir.parent / "cache")
    voices = lib.scan()
    icl = lib.request(voices["anna"])
    np.testing.assert_array_equal(icl["speaker_embedding"], tts.speaker_embedding(ref_wav, 24000))
    np.testing.assert_array_equal(icl["ref_codes"], tts.encode(ref_wav, 24000))
    assert icl["ref_text_ids"] == tts.tokenizer.ref_text_ids("Hello there, this is Anna.")
    xvec = lib.request(voices["bert"])
    assert set(xvec) == {"speaker_embedding"}
    # and they drive the engine
    codes = tts.generate_codes(text="Hi.", greedy=True, max_frames=3, **icl)
    assert codes.shape == (3, 16)


def test_cache_is_used_and_invalidated(tts, voices_dir, monkeypatch, caplog):
    cache = voices_dir.parent / "cache"
    counter = Counting(tts, monkeypatch)
    lib = VoiceLibrary(voices_dir, tts, cache_dir=cache)
    anna = lib.scan()["anna"]
    first = lib.request(anna)
    assert counter.calls == 1 and (cache / "anna.npz").is_file()
    again = VoiceLibrary(voices_dir, tts, cache_dir=cache).request(anna)  # a new process: from the cache
    assert counter.calls == 1
    np.testing.assert_array_equal(first["ref_codes"], again["ref_codes"])

    (voices_dir / "anna" / "ref.txt").write_text("Another transcript.")
    lib.request(anna)
    assert counter.calls == 2

    wav, sr = soundfile.read(voices_dir / "anna" / "ref.wav", dtype="float32")
    soundfile.write(voices_dir / "anna" / "ref.wav", wav * 0.5, sr, subtype="FLOAT")
    lib.request(anna)
    assert counter.calls == 3

    monkeypatch.setattr(tts, "prompt_identity", lambda: "another model")
    VoiceLibrary(voices_dir, tts, cache_dir=cache).request(anna)
    assert counter.calls == 4


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "wrong_shape"])
def test_corrupt_or_foreign_cache_is_rebuilt(tts, voices_dir, monkeypatch, caplog, damage):
    cache = voices_dir.parent / "cache"
    lib = VoiceLibrary(voices_dir, tts, cache_dir=cache)
    anna = lib.scan()["anna"]
    good = lib.request(anna)
    path = cache / "anna.npz"
    if damage == "garbage":
        path.write_bytes(os.urandom(500))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "foreign":
        np.savez(path, key=np.array("something else"), x_vector=np.zeros(64, np.float32))
    else:
        with np.load(path) as z:
            data = dict(z)
        data["x_vector"] = np.zeros(3, np.float32)
        np.savez(path, **data)
    counter = Counting(tts, monkeypatch)
    with caplog.at_level(logging.INFO):
        rebuilt = lib.request(anna)
    assert counter.calls == 1
    np.testing.assert_array_equal(rebuilt["speaker_embedding"], good["speaker_embedding"])
    with np.load(path) as z:  # the cache holds a good prompt again
        np.testing.assert_array_equal(z["x_vector"], good["speaker_embedding"])


def test_concurrent_first_use_computes_once(tts, voices_dir, monkeypatch):
    counter = Counting(tts, monkeypatch, delay_s=0.3)
    lib = VoiceLibrary(voices_dir, tts, cache_dir=voices_dir.parent / "cache")
    anna = lib.scan()["anna"]
    results, errors = [], []

    def use():
        try:
            results.append(lib.request(anna))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=use) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and counter.calls == 1 and len(results) == 2
    np.testing.assert_array_equal(results[0]["ref_codes"], results[1]["ref_codes"])


def test_bad_reference_audio_writes_no_cache(tts, voices_dir):
    (voices_dir / "anna" / "ref.wav").write_text("not audio")
    lib = VoiceLibrary(voices_dir, tts, cache_dir=voices_dir.parent / "cache")
    with pytest.raises(ValueError, match="not a readable audio file"):
        lib.request(lib.scan()["anna"])
    assert not (voices_dir.parent / "cache" / "anna.npz").exists()


def test_library_voices_for_the_server(tts, voices_dir):
    voices = library_voices(VoiceLibrary(voices_dir, tts, cache_dir=voices_dir.parent / "cache"), tts)
    assert set(voices) == {"anna", "bert"}
    assert voices["bert"].languages == ["de", "en"]
    assert set(voices["anna"].request) == {"speaker_embedding", "ref_codes", "ref_text_ids"}


def test_voice_json_language_tags_are_normalised_and_unknown_ones_warned_about(tts, voices_dir, caplog):
    (voices_dir / "bert" / "voice.json").write_text('{"languages": ["de-DE", "en_US", "German", "tlh"]}')
    with caplog.at_level(logging.WARNING):
        voices = library_voices(VoiceLibrary(voices_dir, tts, cache_dir=voices_dir.parent / "cache"), tts)
    assert voices["bert"].languages == ["de", "en"]
    assert "voice bert: voice.json: unknown language 'tlh' ignored" in caplog.text


def test_descriptions_start_with_the_voice_name(tts, voices_dir):
    (voices_dir / "bert" / "voice.json").write_text('{"description": "Deep and calm"}')
    (voices_dir / "carl").mkdir()
    soundfile.write(voices_dir / "carl" / "ref.wav", soundfile.read(voices_dir / "bert" / "ref.wav")[0], 24000)
    voices = library_voices(VoiceLibrary(voices_dir, tts, cache_dir=voices_dir.parent / "cache"), tts)
    # Home Assistant's picker shows descriptions: three cloned voices must not all read "cloned voice"
    assert voices["anna"].description == "anna (cloned voice)"
    assert voices["carl"].description == "carl (cloned voice, timbre only)"
    assert voices["bert"].description == "bert: Deep and calm"
    (voices_dir / "bert" / "voice.json").write_text('{"description": "Bert, deep"}')
    voices = library_voices(VoiceLibrary(voices_dir, tts, cache_dir=voices_dir.parent / "cache"), tts)
    assert voices["bert"].description == "Bert, deep"  # it starts with the name already


def test_a_deeply_nested_voice_json_skips_that_voice_only(tts, voices_dir, caplog):
    (voices_dir / "bert" / "voice.json").write_text("[" * 20_000 + "]" * 20_000)
    with caplog.at_level(logging.WARNING):
        voices = VoiceLibrary(voices_dir, tts).scan()
    assert set(voices) == {"anna"} and "voice.json is nested too deeply" in caplog.text


def test_a_cache_file_with_extra_members_is_rebuilt_without_loading_them(tts, voices_dir, monkeypatch):
    import tracemalloc

    cache = voices_dir.parent / "cache"
    lib = VoiceLibrary(voices_dir, tts, cache_dir=cache)
    anna = lib.scan()["anna"]
    good = lib.request(anna)
    with np.load(cache / "anna.npz") as z:
        members = dict(z)
    # 100 MB of zeros, 100 kB on disk
    np.savez_compressed(cache / "anna.npz", **members, padding=np.zeros(25_000_000, np.float32))
    counter = Counting(tts, monkeypatch)
    tracemalloc.start()
    try:
        rebuilt = VoiceLibrary(voices_dir, tts, cache_dir=cache).request(anna)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"{peak / 1e6:.0f} MB allocated"
    assert counter.calls == 1
    np.testing.assert_array_equal(rebuilt["speaker_embedding"], good["speaker_embedding"])
    with np.load(cache / "anna.npz") as z:
        assert set(z.files) == set(members)


def test_a_cache_path_that_is_a_directory_is_replaced_not_a_reason_to_drop_the_voice(tts, voices_dir):
    cache = voices_dir.parent / "cache"
    (cache / "anna.npz" / "junk").mkdir(parents=True)
    voices = library_voices(VoiceLibrary(voices_dir, tts, cache_dir=cache), tts)
    assert "anna" in voices and (cache / "anna.npz").is_file()


def test_a_long_reference_is_refused_and_a_cached_one_is_hashed_without_reading_it_whole(tts, voices_dir):
    import tracemalloc

    cache = voices_dir.parent / "cache"
    noise = (np.random.default_rng(0).standard_normal(24000 * 120) * 0.1).astype(np.float32)
    soundfile.write(voices_dir / "bert" / "ref.wav", noise, 24000, subtype="FLOAT")  # 2 minutes, 11.5 MB
    lib = VoiceLibrary(voices_dir, tts, cache_dir=cache)
    voices = lib.scan()
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="the limit is 60 s"):
            lib.request(voices["bert"])
        _, refused_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    soundfile.write(voices_dir / "bert" / "ref.wav", noise[:24000 * 20], 24000, subtype="FLOAT")  # 1.9 MB
    lib.request(voices["bert"])  # encoded (this reads it) and cached
    tracemalloc.start()
    try:
        VoiceLibrary(voices_dir, tts, cache_dir=cache).request(voices["bert"])  # a later start: from the cache
        _, cached_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused_peak < 1e6 and cached_peak < 1e6, (refused_peak, cached_peak)
