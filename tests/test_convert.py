"""Tests of wyoming_qwen3tts.convert on the tiny fixtures (tests/fixtures/tiny-17: bf16, code predictor with an
input projection; tiny-06: fp16, no projection) and on damaged copies of them.

Expectations are computed here independently of the converter: metadata from the config files, tensor names from
docs/gguf.md's table, codebooks and dtype conversions with torch.
"""
from __future__ import annotations

import functools
import io
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

from wyoming_qwen3tts import convert as cv

TINY = ["tiny-17", "tiny-06"]
QTYPES = ["f32", "f16", "bf16", "q8_0", "q4_k"]
FTYPE = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q4_k": 15}


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------

class _Field:
    def __init__(self, types: tuple, value):
        self.types, self.value = types, value

    def contents(self):
        return self.value


class _Tensor:
    def __init__(self, name: str, tensor_type: QT, shape: tuple[int, ...], data: np.ndarray):
        self.name, self.tensor_type, self.shape, self.data = name, tensor_type, shape, data


_SCALARS = {VT.UINT8: "<u1", VT.INT8: "<i1", VT.UINT16: "<u2", VT.INT16: "<i2", VT.UINT32: "<u4", VT.INT32: "<i4",
            VT.FLOAT32: "<f4", VT.BOOL: "?", VT.UINT64: "<u8", VT.INT64: "<i8", VT.FLOAT64: "<f8"}


@functools.lru_cache(maxsize=None)
def read_gguf(path: Path) -> tuple[dict, dict]:
    """A small GGUF v3 reader (gguf.GGUFReader takes ~8 s per file on the 450k tokenizer strings; this one <1 s).
    Same interface as GGUFReader's fields/tensors for what these tests use; test_gguf_reader_agrees checks it
    against gguf-py's reader."""
    buf = memoryview(Path(path).read_bytes())
    pos = 0

    def take(fmt: str):
        nonlocal pos
        v = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v[0]

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        s = bytes(buf[pos:pos + n]).decode("utf-8")
        pos += n
        return s

    def value(vt: VT):
        nonlocal pos
        if vt == VT.STRING:
            return string()
        dt = np.dtype(_SCALARS[vt])
        v = np.frombuffer(buf, dt, 1, pos)[0].item()
        pos += dt.itemsize
        return v

    assert bytes(buf[:4]) == b"GGUF"
    pos = 4
    assert take("<I") == 3
    n_tensors, n_kv = take("<Q"), take("<Q")
    fields = {}
    for _ in range(n_kv):
        key = string()
        vt = VT(take("<I"))
        if vt == VT.ARRAY:
            sub = VT(take("<I"))
            n = take("<Q")
            if sub == VT.STRING:
                val = [string() for _ in range(n)]
            else:
                dt = np.dtype(_SCALARS[sub])
                val = np.frombuffer(buf, dt, n, pos).tolist()
                pos += n * dt.itemsize
            fields[key] = _Field((vt, sub), val)
        else:
            fields[key] = _Field((vt,), value(vt))
    infos = []
    for _ in range(n_tensors):
        name = string()
        nd = take("<I")
        ne = tuple(take("<Q") for _ in range(nd))
        infos.append((name, ne, QT(take("<I")), take("<Q")))
    align = fields["general.alignment"].value if "general.alignment" in fields else 32
    start = (pos + align - 1) // align * align
    tensors = {}
    for name, ne, t, off in infos:
        block, tsize = gguf.GGML_QUANT_SIZES[t]
        shape = tuple(reversed(ne))
        nbytes = int(np.prod(ne)) // block * tsize
        raw = np.frombuffer(buf, np.uint8, nbytes, start + off)
        if t == QT.F32:
            data = raw.view(np.float32).reshape(shape)
        elif t == QT.F16:
            data = raw.view(np.float16).reshape(shape)
        else:
            data = raw.reshape(*shape[:-1], shape[-1] // block * tsize)
        tensors[name] = _Tensor(name, t, ne, data)
    return fields, tensors


def field_type(f) -> tuple:
    return tuple(f.types)


def torch_shape(t) -> tuple[int, ...]:
    """PyTorch-order shape of a GGUF tensor (ggml ne reversed)."""
    return tuple(int(x) for x in reversed(list(t.shape)))


def load_ckpt(ckpt: Path) -> tuple[dict, dict]:
    return load_file(ckpt / "model.safetensors"), load_file(ckpt / "speech_tokenizer" / "model.safetensors")


_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
          "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
          "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def doc_name(n: str) -> str | None:
    """docs/gguf.md's tensor table, re-implemented as a chain of rules (codebook parts -> the folded name)."""
    if n.endswith(".initialized"):
        return None
    simple = {"talker.model.text_embedding.weight": "talker.text_embd.weight",
              "talker.model.codec_embedding.weight": "talker.codec_embd.weight",
              "talker.model.norm.weight": "talker.output_norm.weight",
              "talker.codec_head.weight": "talker.codec_head.weight",
              "talker.code_predictor.model.norm.weight": "cp.output_norm.weight"}
    if n in simple:
        return simple[n]
    if m := re.fullmatch(r"talker\.text_projection\.linear_fc([12])\.(weight|bias)", n):
        return f"talker.text_proj.fc{m[1]}.{m[2]}"
    if m := re.fullmatch(r"talker\.(model|code_predictor\.model)\.layers\.(\d+)\.(.+)\.weight", n):
        return f"{'talker' if m[1] == 'model' else 'cp'}.blk.{m[2]}.{_LAYER[m[3]]}.weight"
    if m := re.fullmatch(r"talker\.code_predictor\.model\.codec_embedding\.(\d+)\.weight", n):
        return f"cp.codec_embd.{m[1]}.weight"
    if m := re.fullmatch(r"talker\.code_predictor\.lm_head\.(\d+)\.weight", n):
        return f"cp.head.{m[1]}.weight"
    if m := re.fullmatch(r"talker\.code_predictor\.small_to_mtp_projection\.(weight|bias)", n):
        return f"cp.input_proj.{m[1]}"
    if n.startswith("speaker_encoder."):
        return "spk." + n[16:]
    if m := re.fullmatch(r"decoder\.quantizer\.rvq_first\.vq\.layers\.0\._codebook\.\w+", n):
        return "codec.dec.codebook.0.weight"
    if m := re.fullmatch(r"decoder\.quantizer\.rvq_rest\.vq\.layers\.(\d+)\._codebook\.\w+", n):
        return f"codec.dec.codebook.{int(m[1]) + 1}.weight"
    if m := re.fullmatch(r"decoder\.quantizer\.(rvq_first|rvq_rest)\.output_proj\.weight", n):
        return f"codec.dec.{m[1]}.output_proj.weight"
    if re.fullmatch(r"decoder\.quantizer\.rvq_\w+\.input_proj\.weight", n):
        return None
    if m := re.fullmatch(r"encoder\.quantizer\.semantic_residual_vector_quantizer\.layers\.0\.codebook\.\w+", n):
        return "codec.enc.rvq_sem.codebook.0.weight"
    if m := re.fullmatch(r"encoder\.quantizer\.acoustic_residual_vector_quantizer\.layers\.(\d+)\.codebook\.\w+", n):
        return f"codec.enc.rvq_ac.codebook.{m[1]}.weight" if int(m[1]) < 15 else None
    if m := re.fullmatch(r"encoder\.quantizer\.(semantic|acoustic)_residual_vector_quantizer\.(\w+_proj)\.weight", n):
        return f"codec.enc.rvq_{m[1][:3] if m[1] == 'semantic' else 'ac'}.{m[2]}.weight"
    for src, dst, tf in (("decoder.", "codec.dec.", "pre_transformer."), ("encoder.", "codec.enc.", "encoder_transformer.")):
        if n.startswith(src):
            rest = n[len(src):].replace(tf, "tf.")
            rest = rest.replace("self_attn_layer_scale.scale", "attn_ls").replace("mlp_layer_scale.scale", "mlp_ls")
            return dst + rest.replace("self_attn.", "attn.")
    raise AssertionError(f"unexpected checkpoint tensor {n}")


MATMUL = re.compile(r"(talker|cp)\.blk\.\d+\.(attn_[qkv]|attn_output|ffn_gate|ffn_up|ffn_down)\.weight|"
                    r"talker\.codec_head\.weight|cp\.head\.\d+\.weight|talker\.text_proj\.fc[12]\.weight|"
                    r"cp\.input_proj\.weight")


def expected_type(name: str, shape: tuple[int, ...], qtype: str) -> QT:
    """The type policy of the brief / module docstring, including the Q4_K -> Q8_0 -> F16 fallback."""
    req = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0, "q4_k": QT.Q4_K}[qtype]
    if len(shape) == 1:
        t = QT.F32
    elif name.startswith("codec.dec.") and not re.fullmatch(r"codec\.dec\.(codebook\.\d+|upsample\.\d+\.1\.dwconv\.conv)\.weight", name):
        t = QT.F32 if qtype == "f32" else QT.BF16  # every codec decoder matrix but codebooks and depthwise convs
    elif name.startswith(("codec.", "spk.")):
        t = QT.F32
    elif MATMUL.fullmatch(name):
        t = req
    elif name == "talker.text_embd.weight":
        t = QT.Q8_0 if qtype in ("q8_0", "q4_k") else req
    elif re.fullmatch(r"talker\.codec_embd\.weight|cp\.codec_embd\.\d+\.weight", name):
        t = QT.F16 if qtype in ("q8_0", "q4_k") else req
    else:
        t = QT.F32
    if t == QT.Q4_K and shape[-1] % 256:
        t = QT.Q8_0
    if t == QT.Q8_0 and shape[-1] % 32:
        t = QT.F16
    return t


def expected_metadata(ckpt: Path, qtype: str) -> dict[str, tuple[object, tuple]]:
    """key -> (value, GGUF types) computed from the checkpoint's config files (docs/gguf.md)."""
    cfg_text = (ckpt / "config.json").read_text()
    ccfg_text = (ckpt / "speech_tokenizer" / "config.json").read_text()
    cfg, ccfg = json.loads(cfg_text), json.loads(ccfg_text)
    gen = json.loads((ckpt / "generation_config.json").read_text())
    t, c = cfg["talker_config"], cfg["talker_config"]["code_predictor_config"]
    U, F, S, B = (VT.UINT32,), (VT.FLOAT32,), (VT.STRING,), (VT.BOOL,)
    AI, AS = (VT.ARRAY, VT.INT32), (VT.ARRAY, VT.STRING)
    e = {
        "general.architecture": ("qwen3-tts", S), "general.name": (ckpt.name, S),
        "general.file_type": (FTYPE[qtype], U), "general.quantization_version": (2, U),
        "qwen3-tts.model_type": (cfg["tts_model_type"], S), "qwen3-tts.model_size": (cfg["tts_model_size"], S),
        "qwen3-tts.config_json": (cfg_text, S), "qwen3-tts.codec.config_json": (ccfg_text, S),
        "qwen3-tts.text.im_start_id": (cfg["im_start_token_id"], U),
        "qwen3-tts.text.im_end_id": (cfg["im_end_token_id"], U),
        "qwen3-tts.text.assistant_id": (cfg["assistant_token_id"], U),
        "qwen3-tts.text.tts_pad_id": (cfg["tts_pad_token_id"], U),
        "qwen3-tts.text.tts_bos_id": (cfg["tts_bos_token_id"], U),
        "qwen3-tts.text.tts_eos_id": (cfg["tts_eos_token_id"], U),
        "qwen3-tts.talker.text_vocab_size": (t["text_vocab_size"], U),
        "qwen3-tts.talker.text_embedding_length": (t["text_hidden_size"], U),
        "qwen3-tts.talker.codec.pad_id": (t["codec_pad_id"], U),
        "qwen3-tts.talker.codec.bos_id": (t["codec_bos_id"], U),
        "qwen3-tts.talker.codec.eos_id": (t["codec_eos_token_id"], U),
        "qwen3-tts.talker.codec.think_id": (t["codec_think_id"], U),
        "qwen3-tts.talker.codec.nothink_id": (t["codec_nothink_id"], U),
        "qwen3-tts.talker.codec.think_bos_id": (t["codec_think_bos_id"], U),
        "qwen3-tts.talker.codec.think_eos_id": (t["codec_think_eos_id"], U),
        "qwen3-tts.languages": (list(t["codec_language_id"]), AS),
        "qwen3-tts.language_ids": (list(t["codec_language_id"].values()), AI),
        "qwen3-tts.generation.do_sample": (gen["do_sample"], B),
        "qwen3-tts.generation.subtalker_do_sample": (gen["subtalker_dosample"], B),
        "qwen3-tts.codec.sample_rate": (ccfg["output_sample_rate"], U),
        "qwen3-tts.codec.upsample_rate": (ccfg["decode_upsample_rate"], U),
        "qwen3-tts.codec.encoder_valid_num_quantizers": (ccfg["encoder_valid_num_quantizers"], U),
    }
    for pre, lc in (("qwen3-tts.talker", t), ("qwen3-tts.code_predictor", c)):
        e[f"{pre}.block_count"] = (lc["num_hidden_layers"], U)
        e[f"{pre}.embedding_length"] = (lc["hidden_size"], U)
        e[f"{pre}.feed_forward_length"] = (lc["intermediate_size"], U)
        e[f"{pre}.attention.head_count"] = (lc["num_attention_heads"], U)
        e[f"{pre}.attention.head_count_kv"] = (lc["num_key_value_heads"], U)
        e[f"{pre}.attention.key_length"] = (lc["head_dim"], U)
        e[f"{pre}.attention.layer_norm_rms_epsilon"] = (lc["rms_norm_eps"], F)
        e[f"{pre}.rope.freq_base"] = (lc["rope_theta"], F)
        e[f"{pre}.vocab_size"] = (lc["vocab_size"], U)
        e[f"{pre}.num_code_groups"] = (lc["num_code_groups"], U)
    if t.get("spk_id"):
        e["qwen3-tts.speakers"] = ([k.lower() for k in t["spk_id"]], AS)
        e["qwen3-tts.speaker_ids"] = (list(t["spk_id"].values()), AI)
        e["qwen3-tts.speaker_dialects"] = ([t["spk_is_dialect"][k] or "" for k in t["spk_id"]], AS)
    for k in ("temperature", "top_p", "repetition_penalty", "subtalker_temperature", "subtalker_top_p"):
        e[f"qwen3-tts.generation.{k}"] = (gen[k], F)
    for k in ("top_k", "subtalker_top_k", "max_new_tokens"):
        e[f"qwen3-tts.generation.{k}"] = (gen[k], U)
    if cfg["tts_model_type"] == "base":
        s = cfg["speaker_encoder_config"]
        for k in ("mel_dim", "enc_dim", "sample_rate"):
            e[f"qwen3-tts.speaker_encoder.{k}"] = (s[k], U)
        for k in ("attention_channels", "res2net_scale", "se_channels"):
            e[f"qwen3-tts.speaker_encoder.{k}"] = (s["enc_" + k], U)
        for k in ("channels", "kernel_sizes", "dilations"):
            e[f"qwen3-tts.speaker_encoder.{k}"] = (s["enc_" + k], AI)
    float_keys = {"rope_theta", "rms_norm_eps", "norm_eps", "layer_scale_initial_scale", "_frame_rate",
                  "trim_right_ratio", "attention_dropout"}
    for part in ("decoder", "encoder"):
        for k, v in ccfg[f"{part}_config"].items():
            if isinstance(v, bool) or not isinstance(v, (int, float, list)):
                continue
            key = f"qwen3-tts.codec.{part}.{k}"
            e[key] = (v, AI) if isinstance(v, list) else (v, F if (k in float_keys or isinstance(v, float)) else U)
    return e


# Every key of docs/gguf.md's metadata table (speaker_encoder.* only for Base models; the speaker table only
# where the model has speakers; the codec.decoder/encoder keys are checked against the config above).
DOC_KEYS = """general.architecture general.name general.file_type general.quantization_version qwen3-tts.model_type
qwen3-tts.model_size qwen3-tts.config_json qwen3-tts.codec.config_json qwen3-tts.text.im_start_id
qwen3-tts.text.im_end_id qwen3-tts.text.assistant_id qwen3-tts.text.tts_pad_id qwen3-tts.text.tts_bos_id
qwen3-tts.text.tts_eos_id qwen3-tts.talker.block_count qwen3-tts.talker.embedding_length
qwen3-tts.talker.feed_forward_length qwen3-tts.talker.attention.head_count qwen3-tts.talker.attention.head_count_kv
qwen3-tts.talker.attention.key_length qwen3-tts.talker.attention.layer_norm_rms_epsilon qwen3-tts.talker.rope.freq_base
qwen3-tts.talker.vocab_size qwen3-tts.talker.text_vocab_size qwen3-tts.talker.text_embedding_length
qwen3-tts.talker.num_code_groups qwen3-tts.talker.codec.pad_id qwen3-tts.talker.codec.bos_id
qwen3-tts.talker.codec.eos_id qwen3-tts.talker.codec.think_id qwen3-tts.talker.codec.nothink_id
qwen3-tts.talker.codec.think_bos_id qwen3-tts.talker.codec.think_eos_id qwen3-tts.code_predictor.block_count
qwen3-tts.code_predictor.embedding_length qwen3-tts.code_predictor.feed_forward_length
qwen3-tts.code_predictor.attention.head_count qwen3-tts.code_predictor.attention.head_count_kv
qwen3-tts.code_predictor.attention.key_length qwen3-tts.code_predictor.attention.layer_norm_rms_epsilon
qwen3-tts.code_predictor.rope.freq_base qwen3-tts.code_predictor.vocab_size qwen3-tts.code_predictor.num_code_groups
qwen3-tts.languages qwen3-tts.language_ids qwen3-tts.generation.do_sample qwen3-tts.generation.subtalker_do_sample
qwen3-tts.generation.temperature qwen3-tts.generation.top_p qwen3-tts.generation.repetition_penalty
qwen3-tts.generation.subtalker_temperature qwen3-tts.generation.subtalker_top_p qwen3-tts.generation.top_k
qwen3-tts.generation.subtalker_top_k qwen3-tts.generation.max_new_tokens qwen3-tts.codec.sample_rate
qwen3-tts.codec.upsample_rate qwen3-tts.codec.encoder_valid_num_quantizers tokenizer.ggml.model tokenizer.ggml.pre
tokenizer.ggml.tokens tokenizer.ggml.token_type tokenizer.ggml.merges tokenizer.ggml.eos_token_id
tokenizer.ggml.padding_token_id qwen3-tts.tokenizer.pre_regex""".split()
SPEAKER_KEYS = ["qwen3-tts.speakers", "qwen3-tts.speaker_ids", "qwen3-tts.speaker_dialects"]
SPK_ENC_KEYS = [f"qwen3-tts.speaker_encoder.{k}" for k in (
    "mel_dim", "enc_dim", "attention_channels", "res2net_scale", "se_channels", "sample_rate", "channels",
    "kernel_sizes", "dilations")]


# ---------------------------------------------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TINY)
def test_metadata_matches_configs(name, tiny_checkpoint, tiny_gguf):
    ckpt = tiny_checkpoint(name)
    fields, _ = read_gguf(tiny_gguf(name, "f32"))
    cfg = json.loads((ckpt / "config.json").read_text())
    for k in DOC_KEYS:
        assert k in fields, f"missing metadata key {k}"
    if cfg["talker_config"].get("spk_id"):
        assert all(k in fields for k in SPEAKER_KEYS)
    assert all((k in fields) == (cfg["tts_model_type"] == "base") for k in SPK_ENC_KEYS)

    exp = expected_metadata(ckpt, "f32")
    for key, (val, types) in exp.items():
        assert key in fields, f"missing metadata key {key}"
        f = fields[key]
        assert field_type(f) == types, f"{key}: GGUF type {field_type(f)}, expected {types}"
        got = f.contents()
        if types == (VT.FLOAT32,):
            assert np.float32(got) == np.float32(val), key
        else:
            assert got == val, key
    # nothing outside the documented namespaces
    extra = [k for k in fields if k not in exp and not k.startswith("tokenizer.ggml.")
             and k != "qwen3-tts.tokenizer.pre_regex"]
    assert extra == []


def test_expected_tensors_without_speaker_encoder_or_projection():
    # CustomVoice / VoiceDesign layout: no speaker_encoder.*, and no projection when the widths agree
    exp = cv.expected_main_tensors(
        {"talker_config": {**_TALKER, "code_predictor_config": _TALKER}}, with_speaker_encoder=False)
    assert not any(n.startswith("speaker_encoder.") for n in exp)
    assert "talker.code_predictor.small_to_mtp_projection.weight" not in exp


_TALKER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 16, "text_vocab_size": 100, "text_hidden_size": 32,
           "vocab_size": 3072, "num_code_groups": 16}


def test_gguf_reader_agrees(tiny_gguf):
    """The GGUF is readable by gguf-py's own reader, which sees the same fields and tensors as read_gguf."""
    path = tiny_gguf("tiny-17", "q8_0")
    fields, tensors = read_gguf(path)
    r = gguf.GGUFReader(path)
    rf = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert list(rf) == list(fields)
    for k, f in rf.items():
        assert tuple(f.types) == field_type(fields[k]), k
        assert f.contents() == fields[k].contents(), k
    assert [t.name for t in r.tensors] == list(tensors)
    for t in r.tensors:
        mine = tensors[t.name]
        assert t.tensor_type == mine.tensor_type and [int(x) for x in t.shape] == list(mine.shape), t.name
        assert np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8), mine.data.reshape(-1).view(np.uint8))


@pytest.mark.parametrize("qtype", QTYPES)
def test_file_type(qtype, tiny_gguf):
    fields, _ = read_gguf(tiny_gguf("tiny-17", qtype))
    assert fields["general.file_type"].contents() == FTYPE[qtype]
    assert field_type(fields["general.file_type"]) == (VT.UINT32,)


def test_tokenizer_metadata_written_verbatim(tiny_checkpoint, tiny_gguf):
    from wyoming_qwen3tts.tokenizer import tokenizer_metadata

    meta = tokenizer_metadata(tiny_checkpoint("tiny-17"))
    fields, _ = read_gguf(tiny_gguf("tiny-17", "f32"))
    for k, v in meta.items():
        got = fields[k].contents()
        assert (list(got) if isinstance(v, (list, tuple)) else got) == (list(v) if isinstance(v, (list, tuple)) else v), k
    assert field_type(fields["tokenizer.ggml.token_type"]) == (VT.ARRAY, VT.INT32)
    assert field_type(fields["tokenizer.ggml.tokens"]) == (VT.ARRAY, VT.STRING)
    assert field_type(fields["tokenizer.ggml.eos_token_id"]) == (VT.UINT32,)
    assert len(fields["tokenizer.ggml.tokens"].contents()) == 151676


# ---------------------------------------------------------------------------------------------------------------
# tensors: names, shapes, types
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("name", TINY)
def test_tensor_names_shapes_and_types(name, qtype, tiny_checkpoint, tiny_gguf):
    ckpt = tiny_checkpoint(name)
    main, codec = load_ckpt(ckpt)
    _, tensors = read_gguf(tiny_gguf(name, qtype))
    expected: dict[str, tuple[int, ...]] = {}
    for src in (main, codec):
        for n, t in src.items():
            g = doc_name(n)
            if g is None or n.endswith("cluster_usage"):
                continue
            expected[g] = tuple(t.shape)
    assert sorted(tensors) == sorted(expected)
    for g, t in tensors.items():
        assert len(g) <= 63
        assert torch_shape(t) == expected[g], g
        assert t.tensor_type == expected_type(g, expected[g], qtype), f"{g}: {t.tensor_type.name}"
    # sanity of the fixtures themselves: tiny-17 has the projection, tiny-06 does not
    assert ("cp.input_proj.weight" in tensors) == (name == "tiny-17")
    assert sum(1 for g in tensors if g.startswith("cp.head.")) == 15
    assert sum(1 for g in tensors if g.startswith("cp.codec_embd.")) == 15
    assert sum(1 for g in tensors if g.startswith("codec.dec.codebook.")) == 16
    assert sum(1 for g in tensors if g.startswith("codec.enc.rvq_ac.codebook.")) == 15


def test_fixture_dtypes(tiny_checkpoint):
    main17, _ = load_ckpt(tiny_checkpoint("tiny-17"))
    main06, _ = load_ckpt(tiny_checkpoint("tiny-06"))
    assert {t.dtype for t in main17.values()} == {torch.bfloat16}
    assert {t.dtype for t in main06.values()} == {torch.float16}


@pytest.mark.parametrize("name", TINY)
def test_folded_codebooks(name, tiny_checkpoint, tiny_gguf):
    _, codec = load_ckpt(tiny_checkpoint(name))
    _, tensors = read_gguf(tiny_gguf(name, "q8_0"))

    def fold(prefix: str, sum_key: str) -> np.ndarray:
        es, cu = codec[f"{prefix}.{sum_key}"].float(), codec[f"{prefix}.cluster_usage"].float()
        return (es / torch.clamp(cu, min=1e-5)[:, None]).numpy()

    pairs = [("codec.dec.codebook.0.weight", fold("decoder.quantizer.rvq_first.vq.layers.0._codebook", "embedding_sum"))]
    pairs += [(f"codec.dec.codebook.{j + 1}.weight",
               fold(f"decoder.quantizer.rvq_rest.vq.layers.{j}._codebook", "embedding_sum")) for j in range(15)]
    pairs += [("codec.enc.rvq_sem.codebook.0.weight",
               fold("encoder.quantizer.semantic_residual_vector_quantizer.layers.0.codebook", "embed_sum"))]
    pairs += [(f"codec.enc.rvq_ac.codebook.{j}.weight",
               fold(f"encoder.quantizer.acoustic_residual_vector_quantizer.layers.{j}.codebook", "embed_sum"))
              for j in range(15)]
    for g, ref in pairs:
        t = tensors[g]
        assert t.tensor_type == QT.F32
        np.testing.assert_array_equal(np.asarray(t.data), ref, err_msg=g)


def test_folding_clamps_small_usage(tmp_path):
    """clamp(cluster_usage, min=1e-5): a zero usage must not divide by zero."""
    es = torch.randn(4, 8)
    cu = torch.tensor([0.0, 1e-7, 0.5, 2.0])
    save_file({"a.embedding_sum": es, "a.cluster_usage": cu}, tmp_path / "cb.safetensors")
    st = cv.SafetensorsFile(tmp_path / "cb.safetensors")
    got = cv._fold(st, "a.embedding_sum", "a.cluster_usage")(0, 4)
    np.testing.assert_array_equal(got, (es / torch.clamp(cu, min=1e-5)[:, None]).numpy())


# ---------------------------------------------------------------------------------------------------------------
# dtype conversions
# ---------------------------------------------------------------------------------------------------------------

def _main_pairs(main: dict, tensors: dict):
    for n, t in main.items():
        yield n, doc_name(n), t


@pytest.mark.parametrize("name", TINY)
def test_f32_widening_exact(name, tiny_checkpoint, tiny_gguf):
    """bf16 (tiny-17) and fp16 (tiny-06) -> F32 must equal torch's widening bit for bit."""
    main, _ = load_ckpt(tiny_checkpoint(name))
    _, tensors = read_gguf(tiny_gguf(name, "f32"))
    for n, g, t in _main_pairs(main, tensors):
        got = np.asarray(tensors[g].data)
        assert tensors[g].tensor_type == QT.F32
        ref = t.float().numpy()
        assert got.shape == ref.shape, g
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), g


@pytest.mark.parametrize("name", TINY)
def test_f16_conversion(name, tiny_checkpoint, tiny_gguf):
    main, _ = load_ckpt(tiny_checkpoint(name))
    _, tensors = read_gguf(tiny_gguf(name, "f16"))
    n_f16 = 0
    for n, g, t in _main_pairs(main, tensors):
        tt = tensors[g]
        if tt.tensor_type == QT.F16:
            n_f16 += 1
            ref = t.to(torch.float16).numpy()  # exact copy for tiny-06, RNE rounding of bf16 for tiny-17
            got = np.asarray(tt.data).reshape(ref.shape)
            assert np.array_equal(got.view(np.uint16), ref.view(np.uint16)), g
        else:
            assert tt.tensor_type == QT.F32 and (t.dim() == 1 or g.startswith("spk.")), g
            assert np.array_equal(np.asarray(tt.data), t.float().numpy()), g
    assert n_f16 > 0


@pytest.mark.parametrize("name", TINY)
def test_bf16_conversion(name, tiny_checkpoint, tiny_gguf):
    main, _ = load_ckpt(tiny_checkpoint(name))
    _, tensors = read_gguf(tiny_gguf(name, "bf16"))
    n_bf16 = 0
    for n, g, t in _main_pairs(main, tensors):
        tt = tensors[g]
        if tt.tensor_type == QT.BF16:
            n_bf16 += 1
            ref = t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)  # tiny-17: the stored bits
            got = np.asarray(tt.data).view(np.uint16).reshape(ref.shape)
            assert np.array_equal(got, ref), g
    assert n_bf16 > 0


def test_bf16_rounding_matches_torch():
    x = torch.randn(10000) * torch.logspace(-30, 30, 10000)
    x = torch.cat([x, torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 3.0e38, -3.0e38, 1.0 + 2**-8])])
    ref = x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(cv._to_bf16(x.numpy()), ref)
    nan = cv._to_bf16(np.array([np.nan], np.float32))
    assert np.isnan((nan.astype(np.uint32) << 16).view(np.float32)).all()


def _dequant(t) -> np.ndarray:
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(torch_shape(t))


@pytest.mark.parametrize("name", TINY)
def test_q8_0_round_trip(name, tiny_checkpoint, tiny_gguf):
    main, _ = load_ckpt(tiny_checkpoint(name))
    _, tensors = read_gguf(tiny_gguf(name, "q8_0"))
    n_q = 0
    for n, g, t in _main_pairs(main, tensors):
        tt = tensors[g]
        ref = t.float().numpy()
        if tt.tensor_type == QT.Q8_0:
            n_q += 1
            got = _dequant(tt)
            blocks = ref.reshape(-1, 32)
            tol = np.abs(blocks).max(axis=1, keepdims=True) / 127 * 0.57 + 1e-12
            assert (np.abs(got.reshape(-1, 32) - blocks) <= tol).all(), g
            # the bytes are ggml's Q8_0 (gguf-py's reference quantizer is bit-identical to ggml's for Q8_0)
            assert np.array_equal(np.asarray(tt.data).reshape(-1),
                                  gguf.quants.quantize(ref.reshape(-1, ref.shape[-1]), QT.Q8_0).reshape(-1)), g
        elif tt.tensor_type == QT.F16:
            np.testing.assert_array_equal(np.asarray(tt.data).reshape(ref.shape), t.to(torch.float16).numpy(), g)
        else:
            assert tt.tensor_type == QT.F32
            np.testing.assert_array_equal(np.asarray(tt.data).reshape(ref.shape), ref, g)
    assert n_q > 0
    assert tensors["talker.codec_embd.weight"].tensor_type == QT.F16
    assert tensors["cp.codec_embd.0.weight"].tensor_type == QT.F16


def test_q4_k_quantization_through_engine():
    """No tiny tensor has 256-wide rows, so exercise the Q4_K path of the streaming writer directly."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 512)).astype(np.float32)
    job = cv._Job("w", x.shape, QT.Q4_K, lambda a, b: x[a:b])
    job.nbytes = cv.tensor_nbytes(QT.Q4_K, x.shape)
    buf = io.BytesIO()
    old = cv.CHUNK_BYTES
    try:
        cv.CHUNK_BYTES = 512 * 4 * 7  # 7 rows per chunk: several chunks, a ragged last one
        cv._Stream(job, lambda n: None, {}).tofile(buf)
    finally:
        cv.CHUNK_BYTES = old
    q = np.frombuffer(buf.getvalue(), np.uint8).reshape(300, -1)
    got = gguf.quants.dequantize(q, QT.Q4_K)
    rel = np.sqrt(((got - x) ** 2).mean() / (x ** 2).mean())
    assert rel < 0.12


# ---------------------------------------------------------------------------------------------------------------
# fallbacks, streaming, CLI
# ---------------------------------------------------------------------------------------------------------------

def test_fit_type_fallback_chain():
    assert cv.fit_type(QT.Q4_K, 512) == QT.Q4_K
    assert cv.fit_type(QT.Q4_K, 96) == QT.Q8_0
    assert cv.fit_type(QT.Q4_K, 48) == QT.F16
    assert cv.fit_type(QT.Q8_0, 16) == QT.F16
    assert cv.fit_type(QT.F16, 7) == QT.F16


@pytest.mark.parametrize("qtype", ["q8_0", "q4_k"])
def test_fallback_notes_once_per_kind(qtype, tiny_checkpoint, tmp_path, capsys):
    ckpt = tiny_checkpoint("tiny-17")
    cv.convert(ckpt, tmp_path / "m.gguf", qtype, progress=False)
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    main, _ = load_ckpt(ckpt)
    # count the expected fallbacks (first requested type -> final type)
    kinds: dict[tuple[str, str], int] = {}
    for n, t in main.items():
        g = doc_name(n)
        if t.dim() < 2:
            continue
        first = expected_type(g, (1 << 20, 1 << 20), qtype)  # the type before any fallback
        final = expected_type(g, tuple(t.shape), qtype)
        if first != final:
            kinds[(first.name, final.name)] = kinds.get((first.name, final.name), 0) + 1
    assert kinds, "the tiny model should need fallbacks"
    assert len(notes) == len(kinds), err
    for (a, b), cnt in kinds.items():
        assert any(f"note: {cnt} tensor(s)" in line and a in line and line.endswith(f"stored as {b} instead")
                   for line in notes), (a, b, cnt, notes)


def test_chunked_streaming_is_byte_identical(tiny_checkpoint, tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setattr(cv, "CHUNK_BYTES", 3000)  # forces many small chunks per tensor (text_embd, codebooks, ...)
    out = cv.convert(tiny_checkpoint("tiny-17"), tmp_path / "chunked.gguf", "q8_0", progress=False)
    assert out.read_bytes() == tiny_gguf("tiny-17", "q8_0").read_bytes()


def test_main_success(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "sub" / "m.gguf"
    assert cv.main([str(tiny_checkpoint("tiny-06")), "-o", str(out), "--type", "F16"]) == 0
    err = capsys.readouterr().err
    assert out.is_file() and not (tmp_path / "sub" / "m.gguf.part").exists()
    assert re.search(r"wrote .*m\.gguf \([\d.]+ MB.*\) in [\d.]+ s", err), err
    fields, _ = read_gguf(out)
    assert fields["general.file_type"].contents() == 1


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------

def _expect_error(ckpt: Path, tmp_path: Path, capsys, pattern: str, qtype: str = "f16") -> str:
    out = tmp_path / "out.gguf"
    with pytest.raises(cv.ConversionError) as ei:
        cv.convert(ckpt, out, qtype, progress=False)
    msg = str(ei.value)
    assert re.search(pattern, msg), msg
    assert "\n" not in msg
    capsys.readouterr()
    rc = cv.main([str(ckpt), "-o", str(out), "--type", qtype])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: ")
    assert not out.exists() and not out.with_name(out.name + ".part").exists()
    return msg


def _edit_json(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d, indent=2))


def test_error_missing_merges(tiny_checkpoint, tmp_path, capsys):
    ckpt = tiny_checkpoint("tiny-06", copy=True)
    (ckpt / "merges.txt").unlink()
    _expect_error(ckpt, tmp_path, capsys, r"merges\.txt is missing")


def test_error_missing_config(tiny_checkpoint, tmp_path, capsys):
    ckpt = tiny_checkpoint("tiny-06", copy=True)
    (ckpt / "speech_tokenizer" / "config.json").unlink()
    _expect_error(ckpt, tmp_path, capsys, r"speech_tokenizer/config\.json is missing")


def test_error_not_a_directory(tmp_path, capsys):
    _expect_error(tmp_path / "nope", tmp_path, capsys, r"is not a directory")


def test_error_wrong_model_type(tiny_checkpoint, tmp_path, capsys):
    ckpt = tiny_checkpoint("tiny-06", copy=True)
    _edit_json(ckpt / "config.json", model_type="qwen2")
    _expect_error(ckpt, tmp_path, capsys, r"model_type 'qwen2'.*not a Qwen3-TTS checkpoint")


def test_error_25hz_tokenizer(tiny_checkpoint, tmp_path, capsys):
    ckpt = tiny_checkpoint("tiny-06", copy=True)
    _edit_json(ckpt / "config.json", tokenizer_type="qwen3_tts_tokenizer_25hz")
    _edit_json(ckpt / "speech_tokenizer" / "config.json", model_type="qwen3_tts_tokenizer_25hz")
    _expect_error(ckpt, tmp_path, capsys, r"is a qwen3_tts_tokenizer_25hz model.*only the 12 Hz models")
    # a 25 Hz speech_tokenizer/ alone is caught too
    _edit_json(ckpt / "config.json", tokenizer_type="qwen3_tts_tokenizer_12hz")
    _expect_error(ckpt, tmp_path, capsys, r"speech_tokenizer is a qwen3_tts_tokenizer_25hz model.*only the 12 Hz")


def test_error_truncated_safetensors(tiny_checkpoint, tmp_path, capsys):
    ckpt = tiny_checkpoint("tiny-17", copy=True)
    p = ckpt / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 1000])
    msg = _expect_error(ckpt, tmp_path, capsys, r"model\.safetensors is truncated")
    assert str(p) in msg


def test_error_corrupt_safetensors_header(tiny_checkpoint, tmp_path, capsys):
    ckpt = tiny_checkpoint("tiny-17", copy=True)
    p = ckpt / "speech_tokenizer" / "model.safetensors"
    data = bytearray(p.read_bytes())
    (hlen,) = struct.unpack("<Q", data[:8])
    data[8:8 + 16] = b"not json at all!"
    p.write_bytes(bytes(data))
    _expect_error(ckpt, tmp_path, capsys, r"speech_tokenizer/model\.safetensors has a corrupt safetensors header")
    p.write_bytes(struct.pack("<Q", 1 << 40) + bytes(data[8:]))
    _expect_error(ckpt, tmp_path, capsys, r"not a valid safetensors file")


def test_error_missing_and_unknown_tensors(tiny_checkpoint, tmp_path, capsys):
    ckpt = tiny_checkpoint("tiny-06", copy=True)
    p = ckpt / "model.safetensors"
    sd = load_file(p)
    full = dict(sd)
    del sd["talker.model.layers.1.mlp.up_proj.weight"]
    del sd["talker.code_predictor.lm_head.14.weight"]
    save_file(sd, p)
    msg = _expect_error(ckpt, tmp_path, capsys, r"lacks 2 tensor\(s\)")
    assert "talker.model.layers.1.mlp.up_proj.weight" in msg and "talker.code_predictor.lm_head.14.weight" in msg
    full["talker.model.extra.weight"] = torch.zeros(4)
    save_file(full, p)
    _expect_error(ckpt, tmp_path, capsys, r"unexpected tensor.*talker\.model\.extra\.weight")


def test_error_shape_mismatch(tiny_checkpoint, tmp_path, capsys):
    ckpt = tiny_checkpoint("tiny-06", copy=True)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["talker_config"]["intermediate_size"] *= 2
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _expect_error(ckpt, tmp_path, capsys, r"has shape .* but config\.json implies")


def test_error_bad_type(tiny_checkpoint, tmp_path, capsys):
    _expect_error(tiny_checkpoint("tiny-06"), tmp_path, capsys, r"unknown --type 'q5_1'", qtype="q5_1")


def test_dropped_tensors_may_be_absent(tiny_checkpoint, tmp_path, tiny_gguf):
    """Tensors the GGUF drops (`initialized` flags, the decoder's RVQ input projections) are not required."""
    ckpt = tiny_checkpoint("tiny-06", copy=True)
    p = ckpt / "speech_tokenizer" / "model.safetensors"
    sd = {k: v for k, v in load_file(p).items()
          if not k.endswith(".initialized") and not re.fullmatch(r"decoder\.quantizer\.rvq_\w+\.input_proj\.weight", k)}
    save_file(sd, p)
    out = cv.convert(ckpt, tmp_path / "m.gguf", "f32", progress=False)
    _, got = read_gguf(out)
    _, ref = read_gguf(tiny_gguf("tiny-06", "f32"))
    assert list(got) == list(ref)


def test_general_name_of_hf_cache_snapshot(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("tiny-06")
    snap = tmp_path / "models--Qwen--Qwen3-TTS-12Hz-0.6B-Base" / "snapshots" / ("0123abcd" * 5)
    snap.mkdir(parents=True)
    for p in src.iterdir():
        (snap / p.name).symlink_to(p.resolve(), target_is_directory=p.is_dir())
    fields, _ = read_gguf(cv.convert(snap, tmp_path / "m.gguf", "f16", progress=False))
    assert fields["general.name"].contents() == "Qwen3-TTS-12Hz-0.6B-Base"


def test_error_unwritable_output(tiny_checkpoint, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(cv.ConversionError, match="cannot create the directory"):
        cv.convert(tiny_checkpoint("tiny-06"), blocker / "m.gguf", "f16", progress=False)


def test_error_bad_config_section(tiny_checkpoint, tmp_path, capsys):
    ckpt = tiny_checkpoint("tiny-06", copy=True)
    cfg = json.loads((ckpt / "config.json").read_text())
    del cfg["talker_config"]["num_code_groups"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _expect_error(ckpt, tmp_path, capsys, r"lacks the key 'num_code_groups'")
