"""SynthesisRequest.validate: every field a request carries is checked once, against the model's own numbers,
and a bad one is named in an InvalidRequest (the error a client is told is its own)."""

import numpy as np
import pytest

from wyoming_qwen3tts.request import InvalidRequest, ModelLimits, SynthesisRequest

# Numbers unlike the released models' (16 groups, 2048 codes), so that a check against a constant would fail.
LIMITS = ModelLimits(name="tiny", model_type="base", num_code_groups=4, codebook_size=100, text_vocab_size=500,
                     hidden_size=8, speakers=("vivian", "dylan"), languages=("auto", "english", "beijing_dialect"),
                     has_speaker_encoder=True)
XVEC = np.zeros(8, np.float32)
ICL = dict(speaker_embedding=XVEC, ref_codes=np.zeros((3, 4), np.int32), ref_text="hello")


@pytest.mark.parametrize("fields", [
    dict(text="Hi."),
    dict(text_ids=[0, 499]),
    dict(text="Hi.", speaker="Vivian", language="English", instruct="slowly"),
    dict(text="Hi.", language="beijing_dialect"),
    dict(text="Hi.", **ICL),
    dict(text="Hi.", speaker_embedding=XVEC, ref_codes=np.full((1, 4), 99), ref_text_ids=[1, 2]),
    dict(text="Hi.", greedy=True, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.05, max_frames=0,
         min_frames=0, seed=-5, subtalker_temperature=0.5, subtalker_top_k=np.int64(3), subtalker_top_p=0.1),
    dict(text="Hi.", forced_codes=np.zeros((0, 4), np.int32)),
    dict(text="Hi.", forced_codes=np.full((2, 4), 99, np.int64), record=True, non_streaming_text=False),
])
def test_valid_requests_pass(fields):
    SynthesisRequest(**fields).validate(LIMITS)


@pytest.mark.parametrize("fields, message", [
    (dict(), "^give exactly one of text or text_ids$"),
    (dict(text="a", text_ids=[1]), "^give exactly one of text or text_ids$"),
    (dict(text=5), "^text must be a string, not int$"),
    (dict(text=" \n "), "^text is empty: nothing to synthesize$"),
    (dict(text_ids=[]), "^text_ids is empty: nothing to synthesize$"),
    (dict(text_ids=[500]), r"^text_ids must lie in 0\.\.499$"),
    (dict(text_ids=[-1]), r"^text_ids must lie in 0\.\.499$"),
    (dict(text_ids=[1.5]), "^text_ids must be integers, got float64$"),
    (dict(text="a", instruct="x", instruct_ids=[1]), "^give at most one of instruct or instruct_ids$"),
    (dict(text="a", instruct_ids=[9999]), r"^instruct_ids must lie in 0\.\.499$"),
    (dict(text="a", instruct=["x"]), "^instruct must be a string, not list$"),
    (dict(text="a", language="klingon"), "^unknown language 'klingon'; valid languages: auto, english$"),
    (dict(text="a", language=7), "^language must be a string, not int$"),
    (dict(text="a", speaker="nobody"), "^unknown speaker 'nobody'; valid speakers: vivian, dylan$"),
    (dict(text="a", speaker="vivian", speaker_embedding=XVEC), "^give either a speaker or a speaker_embedding"),
    (dict(text="a", speaker_embedding=np.zeros(7)), "^speaker_embedding must have 8 values, got 7$"),
    (dict(text="a", speaker_embedding=np.full(8, np.nan)), "^speaker_embedding must hold finite numbers$"),
    (dict(text="a", ref_codes=np.zeros((3, 4), int), ref_text="x"), "also needs the reference speaker_embedding"),
    (dict(text="a", ref_text="hello"), r"^ref_text needs ref_codes \(ICL cloning\)$"),
    (dict(text="a", **{**ICL, "ref_codes": np.zeros((3, 16), int)}),
     r"^ref_codes must have shape \[frames, 4\], got \(3, 16\)$"),
    (dict(text="a", **{**ICL, "ref_codes": np.zeros((0, 4), int)}), r"^ref_codes must have shape \[frames, 4\]"),
    (dict(text="a", **{**ICL, "ref_codes": np.full((3, 4), 100)}), r"^ref_codes must lie in 0\.\.99$"),
    (dict(text="a", **{**ICL, "ref_codes": np.full((3, 4), 0.5)}), "^ref_codes must be integers, got float64$"),
    (dict(text="a", **{**ICL, "ref_text_ids": [1]}), "^ICL cloning needs exactly one of ref_text or ref_text_ids$"),
    (dict(text="a", **{**ICL, "ref_text": "  "}), "^ref_text is empty$"),
    (dict(text="a", **{**ICL, "ref_text": None, "ref_text_ids": []}), "^ref_text_ids is empty$"),
    (dict(text="a", **{**ICL, "ref_text": None, "ref_text_ids": [500]}), r"^ref_text_ids must lie in 0\.\.499$"),
    (dict(text="a", forced_codes=np.zeros((2, 16), int)), r"^forced_codes must have shape \[frames, 4\]"),
    (dict(text="a", forced_codes=np.full((2, 4), -1)), r"^forced_codes must lie in 0\.\.99$"),
    (dict(text="a", forced_codes=np.zeros((2, 4), np.float32)), "^forced_codes must be integers, got float32$"),
    (dict(text="a", greedy="yes"), "^greedy must be true or false, not str$"),
    (dict(text="a", record=1), "^record must be true or false, not int$"),
    (dict(text="a", top_k=2.0), "^top_k must be an integer, not float$"),
    (dict(text="a", top_k=True), "^top_k must be an integer, not bool$"),
    (dict(text="a", top_k=-1), "^top_k must be >= 0$"),
    (dict(text="a", max_frames=-1), "^max_frames must be >= 0$"),
    (dict(text="a", min_frames=-3), "^min_frames must be >= 0$"),
    (dict(text="a", seed="1"), "^seed must be an integer, not str$"),
    (dict(text="a", temperature="hot"), "^temperature must be a number, not str$"),
    (dict(text="a", temperature=0.0), r"^temperature must be > 0 when sampling$"),
    (dict(text="a", subtalker_temperature=float("nan")), r"^subtalker_temperature must be > 0 when sampling$"),
    (dict(text="a", top_p=0.0), r"^top_p must be in \(0, 1\]$"),
    (dict(text="a", subtalker_top_p=1.5), r"^subtalker_top_p must be in \(0, 1\]$"),
    (dict(text="a", repetition_penalty=0), "^repetition_penalty must be > 0$"),
])
def test_each_bad_field_is_named(fields, message):
    with pytest.raises(InvalidRequest, match=message):
        SynthesisRequest(**fields).validate(LIMITS)


def test_cloning_needs_a_speaker_encoder():
    custom_voice = ModelLimits(**{**LIMITS.__dict__, "model_type": "custom_voice", "has_speaker_encoder": False})
    for fields in (dict(speaker_embedding=XVEC), ICL):
        with pytest.raises(InvalidRequest, match=r"^voice cloning needs a Base model with a speaker encoder; tiny "
                                                 r"\(custom_voice\) has none$"):
            SynthesisRequest(text="a", **fields).validate(custom_voice)


def test_the_engine_checks_requests_against_its_model(tiny_gguf):
    from wyoming_qwen3tts import Qwen3TTS

    tts = Qwen3TTS(tiny_gguf("tiny-06", "f32"), threads=1)
    assert (tts.limits.num_code_groups, tts.limits.codebook_size, tts.limits.hidden_size) == (16, 2048,
                                                                                             tts.hidden_size)
    request = SynthesisRequest(text="Hi.", speaker="vivian", greedy=True, max_frames=2)
    assert tts.generate_codes(request).shape == (2, 16)
    with pytest.raises(InvalidRequest, match=r"forced_codes must lie in 0\.\.2047"):
        tts.generate_codes(request, forced_codes=np.full((1, 16), 2048))
    with pytest.raises(TypeError):  # a field that does not exist is a programming error, not a bad request
        tts.generate_codes(request, temprature=0.5)
