"""Parity of the talker, the code predictor and every prompt layout with the official reference.

The oracle was produced by qwen-tts 0.1.1 on the same random weights (tests/reference/make_fixtures.py): the
committed tests/fixtures/<model>/oracle.safetensors, regenerated on this machine when the reference is installed
(conftest.py's reference_fixtures: torch's own float32 results move by about 1e-5 between CPUs). The path under
test is the real one: checkpoint directory -> converter -> F32 GGUF -> C++ engine. Tolerances follow the model
document (docs/model.md, parity): 1e-5 abs on embeddings, logits and hidden states; greedy codes identical.
"""

from __future__ import annotations

import numpy as np
import pytest

from wyoming_qwen3tts import Qwen3TTS

from helpers import mode_kwargs, oracle

TOL = 1e-5
MODELS = ["tiny-17", "tiny-06"]  # with and without the code predictor's input projection


@pytest.fixture(scope="module", params=MODELS)
def model_and_oracle(request, tiny_gguf, reference_fixtures):
    return Qwen3TTS(tiny_gguf(request.param, "f32"), threads=1), oracle(request.param, reference_fixtures)


def run_recorded(tts: Qwen3TTS, text_ids: list[int], max_frames: int, **kw):
    session = tts.open_session(text_ids=text_ids, greedy=True, max_frames=max_frames, record=True, **kw)
    frames = []
    while (f := session.next_frame()) is not None:
        frames.append(f)
    codes = np.stack(frames) if frames else np.zeros((0, 16), np.int32)
    return session, codes


@pytest.mark.parametrize("mode", list(mode_kwargs(oracle("tiny-17"))))
def test_mode_parity(model_and_oracle, mode):
    tts, o = model_and_oracle
    text_ids = o["ids.input"][0].tolist()[3:-5]
    want_codes = o[f"{mode}.codes"]
    # The reference ran max_new_tokens=6: 5 frames plus a 6th code-0 decision. max_frames=6 lets the engine
    # compute that 6th talker step too, so all 6 logit rows can be compared.
    session, codes = run_recorded(tts, text_ids, max_frames=want_codes.shape[0] + 1, **mode_kwargs(o)[mode])

    np.testing.assert_array_equal(codes[: want_codes.shape[0]], want_codes)
    checks = {
        "prompt_embeds": session.record("prompt_embeds"),
        "step_inputs": session.record("step_inputs"),
        "talker_logits": session.record("talker_logits"),
        "talker_hidden": session.record("talker_hidden"),
        "cp_logits": session.record("cp_logits"),
    }
    assert session.prompt_length == o[f"{mode}.prompt_embeds"].shape[0]
    for key, got in checks.items():
        want = o[f"{mode}.{key}"]
        assert got.shape[0] >= want.shape[0], f"{key}: {got.shape} vs {want.shape}"
        diff = np.abs(got[: want.shape[0]] - want).max()
        assert diff <= TOL, f"{mode} {key}: max abs diff {diff:.3g} > {TOL}"
    cp_in = session.record("cp_prefill_in")[:2]
    assert np.abs(cp_in - o[f"{mode}.cp_prefill_in"]).max() <= TOL


def test_max_frames_caps_output(model_and_oracle):
    tts, o = model_and_oracle
    text_ids = o["ids.input"][0].tolist()[3:-5]
    codes = tts.generate_codes(text_ids=text_ids, speaker="vivian", language="english", greedy=True, max_frames=3)
    np.testing.assert_array_equal(codes, o["custom_voice.codes"][:3])
    assert tts.generate_codes(text_ids=text_ids, speaker="vivian", greedy=True, max_frames=0).shape == (0, 16)


def test_min_frames_holds_eos_back(model_and_oracle):
    tts, o = model_and_oracle
    text_ids = o["ids.input"][0].tolist()[3:-5]
    codes = tts.generate_codes(text_ids=text_ids, speaker="vivian", greedy=True, min_frames=40, max_frames=40)
    assert codes.shape == (40, 16)
    assert codes.max() < 2048 and codes.min() >= 0


def test_text_string_matches_ids(model_and_oracle):
    tts, _ = model_and_oracle
    by_text = tts.generate_codes(text="Hello, world!", speaker="vivian", language="english", greedy=True,
                                 max_frames=4)
    by_ids = tts.generate_codes(text_ids=[9707, 11, 1879, 0], speaker="vivian", language="english", greedy=True,
                                max_frames=4)
    np.testing.assert_array_equal(by_text, by_ids)


def test_sampling_is_seeded(model_and_oracle):
    tts, o = model_and_oracle
    text_ids = o["ids.input"][0].tolist()[3:-5]
    kw = dict(text_ids=text_ids, speaker="vivian", language="english", max_frames=8, min_frames=8)
    a = tts.generate_codes(seed=7, **kw)
    b = tts.generate_codes(seed=7, **kw)
    c = tts.generate_codes(seed=8, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # top_k=1 sampling keeps only the argmax: it must reproduce greedy decoding exactly.
    greedy = tts.generate_codes(greedy=True, **kw)
    top1 = tts.generate_codes(seed=3, top_k=1, subtalker_top_k=1, **kw)
    np.testing.assert_array_equal(top1, greedy)


def test_iter_frames_is_lazy_and_cancellable(model_and_oracle):
    tts, o = model_and_oracle
    text_ids = o["ids.input"][0].tolist()[3:-5]
    it = tts.iter_frames(text_ids=text_ids, speaker="vivian", language="english", greedy=True)
    first = next(it)
    it.close()
    np.testing.assert_array_equal(first, o["custom_voice.codes"][0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(text="hi", speaker="nobody"), "valid speakers: vivian, dylan"),
    (dict(text="hi", language="klingon"), "valid languages: auto, chinese, english"),
    (dict(text="   "), "text is empty"),
    (dict(text_ids=[]), "empty"),
    (dict(text="hi", speaker="vivian", speaker_embedding="xvec"), "not both"),
    (dict(text="hi", speaker_embedding=np.zeros(3)), "must have {hidden} values"),
    (dict(text="hi", speaker_embedding="xvec", ref_codes=np.zeros((3, 16), int)), "ref_text"),
    (dict(text="hi", speaker_embedding="xvec", ref_codes=np.full((3, 16), 4096), ref_text="a"), "0..2047"),
    (dict(text="hi", ref_text="hello"), "needs ref_codes"),
    (dict(text="hi", max_frames=-1), "max_frames"),
])
def test_invalid_requests_raise_value_error(model_and_oracle, kwargs, message):
    tts, _ = model_and_oracle
    kwargs = {k: np.zeros(tts.hidden_size) if isinstance(v, str) and v == "xvec" else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=message.format(hidden=tts.hidden_size)):
        tts.generate_codes(**kwargs)


def test_tables_come_from_the_gguf(model_and_oracle):
    tts, _ = model_and_oracle
    assert tts.model_type == "base"
    assert tts.speakers == ["vivian", "dylan"]
    assert tts.languages[0] == "auto" and "english" in tts.languages
    assert not any("dialect" in lang for lang in tts.languages)
    assert tts.has_speaker_encoder
    assert "ggml" in tts.system_info() and "backend" in tts.system_info()
