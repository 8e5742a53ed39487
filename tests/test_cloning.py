"""Voice cloning end to end: reference audio -> prompt -> greedy codes -> waveform, against the reference's
icl_clone / xvector_clone runs (tests/fixtures/tiny-17/oracle.safetensors), and the CLIs' cloning options."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest
import soundfile
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeVoice


from helpers import SPF, audio_of, oracle, read_until, start_server, stop_process



@pytest.fixture(scope="module")
def o():
    return oracle("tiny-17")


def test_clone_prompts_from_reference_audio_reproduce_the_reference_codes(tts, o):
    text_ids = o["ids.input"][0].tolist()[3:-5]
    xvec = tts.speaker_embedding(o["ref_wav"], 24000)
    ref_codes = tts.encode(o["ref_wav"], 24000)
    np.testing.assert_array_equal(ref_codes, o["ref_code"])
    icl = tts.generate_codes(text_ids=text_ids, language="english", speaker_embedding=xvec, ref_codes=ref_codes,
                             ref_text_ids=o["ids.ref"][0].tolist()[3:-2], greedy=True, max_frames=5)
    np.testing.assert_array_equal(icl, o["icl_clone.codes"])
    xv = tts.generate_codes(text_ids=text_ids, language="english", speaker_embedding=xvec, greedy=True, max_frames=5)
    np.testing.assert_array_equal(xv, o["xvector_clone.codes"])


def test_icl_waveform_drops_the_reference_part_like_the_reference(tts, o):
    text_ids = o["ids.input"][0].tolist()[3:-5]
    kw = dict(text_ids=text_ids, language="english", speaker_embedding=o["spk.embedding"], ref_codes=o["ref_code"],
              ref_text_ids=o["ids.ref"][0].tolist()[3:-2], greedy=True, max_frames=5)
    wav = tts.synthesize(**kw)
    # The reference: decode(ref_code ++ codes), then drop int(K / T * n) samples (float64).
    whole = tts.decode(np.concatenate([o["ref_code"], o["icl_clone.codes"]]))
    k, t = o["ref_code"].shape[0], o["ref_code"].shape[0] + 5
    cut = int(k / t * whole.shape[0])
    want = whole[cut:]
    assert wav.shape == want.shape
    assert np.abs(wav - want).max() <= 1e-6
    # Streaming gives the same audio from the reference boundary on.
    streamed = np.concatenate(list(tts.stream(**kw)))
    np.testing.assert_array_equal(streamed, wav[wav.shape[0] - streamed.shape[0]:])


@pytest.mark.parametrize("k, t", [(17, 22), (3, 4), (7, 100), (29, 57)])
def test_icl_cut_arithmetic_matches_python_float64(k, t):
    # the cases where float rounding keeps one sample of the reference audio exist and are reproduced
    cut = int(k / t * (t * SPF))
    assert k * SPF - cut in (0, 1)


def write_voice(root, name, wav, transcript=None):
    (root / name).mkdir(parents=True)
    soundfile.write(root / name / "ref.wav", wav, 24000, subtype="FLOAT")
    if transcript:
        (root / name / "ref.txt").write_text(transcript)


def test_synth_cli_clones_from_audio_and_from_the_library(tiny_gguf, o, tmp_path):
    model = str(tiny_gguf("tiny-17", "f32"))
    ref = tmp_path / "ref.wav"
    soundfile.write(ref, o["ref_wav"], 24000, subtype="FLOAT")
    voices = tmp_path / "voices"
    write_voice(voices, "anna", o["ref_wav"], "Hello there.")

    def synth(*args):
        r = subprocess.run([sys.executable, "-m", "wyoming_qwen3tts.synth", "-m", model, "-t", "Good morning.",
                            "--greedy", "--max-frames", "4", "--threads", "1", *args], capture_output=True,
                           text=True, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return soundfile.read(tmp_path / args[args.index("-o") + 1], dtype="int16")[0]

    direct = synth("-o", "a.wav", "--ref-audio", str(ref), "--ref-text", "Hello there.")
    library = synth("-o", "b.wav", "--voice", "anna", "--voices-dir", str(voices))
    np.testing.assert_array_equal(direct, library)
    xvector = synth("-o", "c.wav", "--ref-audio", str(ref))
    assert xvector.size % SPF == 0 and xvector.size > 0
    bad = subprocess.run([sys.executable, "-m", "wyoming_qwen3tts.synth", "-m", model, "-t", "x", "-o", "d.wav",
                          "--voice", "zed", "--voices-dir", str(voices)], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "voices in" in bad.stderr and "Traceback" not in bad.stderr


async def test_server_serves_library_voices(tiny_gguf, o, tmp_path):
    voices = tmp_path / "voices"
    write_voice(voices, "anna", o["ref_wav"], "Hello there.")
    write_voice(voices, "bert", o["ref_wav"][::-1].copy())
    uri, proc = start_server(tiny_gguf("tiny-17", "f32"), tmp_path / "server.log", "--max-frames", "3",
                             "--voices-dir", str(voices), "--data-dir", str(tmp_path / "data"))
    try:
        async with AsyncTcpClient.from_uri(uri) as client:
            await client.write_event(Describe().event())
            info = Info.from_event(await asyncio.wait_for(client.read_event(), 30))
        assert [v.name for v in info.tts[0].voices][:4] == ["vivian", "dylan", "anna", "bert"]  # + language variants
        assert (tmp_path / "data" / "voice-cache" / "anna.npz").is_file()  # encoded once, at start-up
        async with AsyncTcpClient.from_uri(uri) as client:
            await client.write_event(Synthesize(text="Hi.", voice=SynthesizeVoice(name="anna")).event())
            samples = audio_of(await read_until(client, "audio-stop"))
        assert samples.size > 0
    finally:
        stop_process(proc)
