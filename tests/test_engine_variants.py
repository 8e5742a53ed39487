"""Model-type policy of the Python API on a model without a speaker encoder: a 0.6B CustomVoice derived from
the tiny-06 fixture (speaker_encoder_config and spk.* tensors removed, tts_model_type/size changed)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from wyoming_qwen3tts import Qwen3TTS
from wyoming_qwen3tts.convert import convert


@pytest.fixture(scope="module")
def custom_voice_06(tiny_checkpoint, tmp_path_factory):
    ckpt = tiny_checkpoint("tiny-06", copy=True)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(tts_model_type="custom_voice", tts_model_size="0b6")
    del cfg["speaker_encoder_config"]
    (ckpt / "config.json").write_text(json.dumps(cfg, indent=2))
    weights = load_file(str(ckpt / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("speaker_encoder.")},
              str(ckpt / "model.safetensors"))
    path = convert(ckpt, tmp_path_factory.mktemp("cv06") / "cv06.gguf", "f32", progress=False)
    return Qwen3TTS(path, threads=1)


def test_no_speaker_encoder(custom_voice_06):
    assert custom_voice_06.model_type == "custom_voice"
    assert not custom_voice_06.has_speaker_encoder


@pytest.mark.parametrize("kwargs", [
    dict(speaker_embedding=np.zeros(32, np.float32)),
    dict(speaker_embedding=np.zeros(32, np.float32), ref_codes=np.zeros((2, 16), int), ref_text="hello"),
])
def test_clone_arguments_need_a_speaker_encoder(custom_voice_06, kwargs):
    with pytest.raises(ValueError, match="speaker encoder"):
        custom_voice_06.generate_codes(text="Hello.", max_frames=2, **kwargs)


def test_instruction_dropped_on_06b_custom_voice(custom_voice_06, caplog):
    kw = dict(text="Hello.", speaker="vivian", language="english", greedy=True, max_frames=4)
    plain = custom_voice_06.generate_codes(**kw)
    with caplog.at_level(logging.WARNING):
        instructed = custom_voice_06.generate_codes(instruct="Speak very slowly.", **kw)
    np.testing.assert_array_equal(plain, instructed)
    assert any("ignore instructions" in r.getMessage() for r in caplog.records)


def test_instruction_kept_elsewhere(tiny_gguf):
    # The tiny fixtures are Base-type models of size "tiny": the reference keeps the instruction there.
    tts = Qwen3TTS(tiny_gguf("tiny-06", "f32"), threads=1)
    kw = dict(text="Hello.", speaker="vivian", language="english", greedy=True, max_frames=4)
    s_plain = tts.open_session(**kw)
    s_instr = tts.open_session(instruct="Speak very slowly.", **kw)
    assert s_instr.prompt_length > s_plain.prompt_length


def test_out_of_range_text_ids_are_a_value_error(tiny_gguf):
    tts = Qwen3TTS(tiny_gguf("tiny-06", "f32"), threads=1)
    with pytest.raises(ValueError, match="text_ids"):
        tts.generate_codes(text_ids=[10**7], max_frames=1)
    with pytest.raises(ValueError, match="instruct_ids"):
        tts.generate_codes(text="hi", instruct_ids=[-1], max_frames=1)
