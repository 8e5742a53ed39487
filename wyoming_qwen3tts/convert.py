"""Convert a released Qwen3-TTS 12 Hz checkpoint (Hugging Face layout) into one GGUF file.

Usage::

    python -m wyoming_qwen3tts.convert CHECKPOINT_DIR -o model.gguf --type f32|f16|bf16|q8_0|q4_k

or, from Python, ``convert(checkpoint_dir, out_path, qtype, progress=True) -> Path``.

The checkpoint directory holds ``config.json``, ``generation_config.json`` (optional: the reference wrapper's
defaults are used where it or a key is missing), ``model.safetensors``, the Qwen2 text tokenizer
(``vocab.json``, ``merges.txt``, ``tokenizer_config.json``) and ``speech_tokenizer/{config.json,
model.safetensors}``. Only the 12 Hz models (``tokenizer_type == "qwen3_tts_tokenizer_12hz"``) are supported.
The output layout (metadata keys and tensor names) is described in ``docs/gguf.md``.

Tensor type policy
------------------
``--type`` (default ``f16``) chooses the storage type of the large matrices of the talker and the code predictor
only; everything else has a fixed type:

* 1-D tensors (norm gains, biases, layer scales, SnakeBeta alpha/beta): F32, always.
* Codec codebooks, folded as the reference does (``embedding_sum / clamp(cluster_usage, min=1e-5)[:, None]``,
  computed in float32): F32, always.
* Codec decoder matrix-multiplication weights (its transformer's linear layers, the RVQ output projections
  and every convolution but the depthwise ones, ``codec.dec.*``): F32 for f32, BF16 for every other type.
  They carry the codec's arithmetic; on CPUs with AVX512-BF16 ggml multiplies them about twice as fast as
  F32 (the benchmark prints the waveform's cosine to the F32 codec).
* The rest of the speech tokenizer (depthwise convolutions, ``codec.enc.*``) and the speaker encoder
  (``spk.*``): F32, always.
* Talker / code-predictor matrix-multiplication weights (``*.attn_q/k/v/output.weight``,
  ``*.ffn_gate/up/down.weight``, ``talker.codec_head.weight``, ``cp.head.J.weight``,
  ``talker.text_proj.fc1/fc2.weight``, ``cp.input_proj.weight``): the requested type
  (f32 -> F32, f16 -> F16, bf16 -> BF16, q8_0 -> Q8_0, q4_k -> Q4_K).
* Embedding tables (``talker.text_embd.weight``, ``talker.codec_embd.weight``, ``cp.codec_embd.J.weight``):
  the requested type for f32 / f16 / bf16; for q8_0 and q4_k the text embedding is Q8_0 and the codec
  embedding tables are F16.
* A quantized type needs the row length (ggml ``ne[0]``, the last PyTorch dimension) to be a multiple of its
  block size (32 for Q8_0, 256 for Q4_K). A tensor whose rows do not fit falls back along
  Q4_K -> Q8_0 -> F16; one note per distinct fallback is printed.
* F16 conversion saturates at +-65504 (a note is printed if any value had to be clamped); BF16 conversion
  rounds to nearest even (exact for the released bf16 weights).
* Quantization uses ggml's own quantizer (``wyoming_qwen3tts._engine.quantize``), so the bytes are exactly what
  llama.cpp-style tools would produce.

``general.file_type`` is llama.cpp's ``LLAMA_FTYPE_*`` of ``--type``: 0 f32, 1 f16, 32 bf16, 7 q8_0, 15 q4_k.

Metadata details not fixed by docs/gguf.md
------------------------------------------
* Empty arrays are not written (gguf-py cannot write them): ``qwen3-tts.speakers`` / ``speaker_ids`` /
  ``speaker_dialects`` are absent for models without speakers (Base, VoiceDesign); absent means empty.
* ``qwen3-tts.codec.{decoder,encoder}.<key>``: integers -> u32, floats -> f32, integer lists -> i32[]; the
  real-valued keys ``rope_theta``, ``*_eps``, ``layer_scale_initial_scale``, ``_frame_rate``,
  ``trim_right_ratio``, ``attention_dropout`` are always f32 (the configs spell ``rope_theta`` both 10000 and
  10000.0); booleans, strings and nulls are skipped (the verbatim ``codec.config_json`` has them).
* ``qwen3-tts.speaker_encoder.*`` come from ``speaker_encoder_config`` with the reference class defaults for
  keys it omits (the released configs give only ``enc_dim`` and ``sample_rate``).
* ``general.name`` is the checkpoint directory's name, or the repository's name for a Hugging Face cache
  snapshot (``models--Qwen--<name>/snapshots/<hash>``).

Conversion streams: each tensor is read from the memory-mapped safetensors file, converted and written a few
MiB at a time, so memory use stays far below the model size (about 230 MB peak RSS for the 1.7B model).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

from wyoming_qwen3tts.request import REFERENCE_GENERATION_DEFAULTS

__all__ = ["ConversionError", "convert", "main", "SafetensorsFile", "gguf_tensor_name", "QTYPES"]

ARCH = "qwen3-tts"
MAX_NAME_LEN = 63
CHUNK_BYTES = 32 << 20  # float32 bytes converted per step

# --type -> (matmul type, text embedding type, codec embedding type, LLAMA_FTYPE)
QTYPES: dict[str, tuple[QT, QT, QT, int]] = {
    "f32": (QT.F32, QT.F32, QT.F32, 0),
    "f16": (QT.F16, QT.F16, QT.F16, 1),
    "bf16": (QT.BF16, QT.BF16, QT.BF16, 32),
    "q8_0": (QT.Q8_0, QT.Q8_0, QT.F16, 7),
    "q4_k": (QT.Q4_K, QT.Q8_0, QT.F16, 15),
}
_FALLBACK = {QT.Q4_K: QT.Q8_0, QT.Q8_0: QT.F16}
_QUANTIZED = (QT.Q8_0, QT.Q4_K)

# Qwen3TTSSpeakerEncoderConfig class defaults.
SPEAKER_ENCODER_DEFAULTS = {
    "mel_dim": 128, "enc_dim": 1024, "enc_channels": [512, 512, 512, 512, 1536],
    "enc_kernel_sizes": [5, 3, 3, 3, 1], "enc_dilations": [1, 2, 3, 4, 1], "enc_attention_channels": 128,
    "enc_res2net_scale": 8, "enc_se_channels": 128, "sample_rate": 24000,
}
# Codec config keys that are real-valued whatever their JSON spelling (10000 vs 10000.0), stored as f32.
_FLOAT_KEYS = {"rope_theta", "rms_norm_eps", "norm_eps", "layer_scale_initial_scale", "_frame_rate",
               "trim_right_ratio", "attention_dropout"}


class ConversionError(Exception):
    """A user-facing conversion failure; its message is one sentence."""


# ---------------------------------------------------------------------------------------------------------------
# safetensors reading (bf16 included, without torch)
# ---------------------------------------------------------------------------------------------------------------

_ST_DTYPES = {
    "BF16": (np.dtype("<u2"), 2), "F16": (np.dtype("<f2"), 2), "F32": (np.dtype("<f4"), 4),
    "F64": (np.dtype("<f8"), 8),
}


@dataclass
class TensorMeta:
    name: str
    dtype: str           # safetensors dtype string
    shape: tuple[int, ...]
    start: int           # absolute byte offset in the file
    nbytes: int


class SafetensorsFile:
    """A validated safetensors header plus memory-mapped, on-demand reads widened to float32."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ConversionError(f"{self.path} is not a safetensors file (shorter than its 8-byte header length).")
                (hlen,) = struct.unpack("<Q", head)
                if hlen > size - 8 or hlen > 256 << 20:
                    raise ConversionError(
                        f"{self.path} is not a valid safetensors file (header length {hlen} exceeds the file size {size}).")
                raw = f.read(hlen)
        except OSError as e:
            raise ConversionError(f"cannot read {self.path}: {e.strerror or e}.") from e
        try:
            header = json.loads(raw.decode("utf-8"))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
        except (UnicodeDecodeError, ValueError) as e:
            raise ConversionError(f"{self.path} has a corrupt safetensors header ({e}).") from e
        self.size = size
        data_start = 8 + hlen
        self.metadata = header.pop("__metadata__", None) or {}
        self.tensors: dict[str, TensorMeta] = {}
        for name, info in header.items():
            try:
                dtype = info["dtype"]
                shape = tuple(int(s) for s in info["shape"])
                begin, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise ConversionError(f"{self.path} has a corrupt safetensors header entry for {name!r}.") from e
            if dtype not in _ST_DTYPES:
                raise ConversionError(
                    f"{self.path}: tensor {name!r} has dtype {dtype}; only BF16, F16, F32 and F64 are supported.")
            if any(s < 0 for s in shape) or begin < 0 or end < begin:
                raise ConversionError(f"{self.path} has a corrupt safetensors header entry for {name!r}.")
            if end - begin != math.prod(shape) * _ST_DTYPES[dtype][1]:
                raise ConversionError(
                    f"{self.path}: tensor {name!r} has {end - begin} bytes of data but shape {list(shape)} {dtype}.")
            if data_start + end > size:
                raise ConversionError(
                    f"{self.path} is truncated: tensor {name!r} ends at byte {data_start + end} but the file has "
                    f"{size} bytes (re-download it).")
            self.tensors[name] = TensorMeta(name, dtype, shape, data_start + begin, end - begin)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def read(self, name: str, row_start: int = 0, row_end: int | None = None) -> np.ndarray:
        """Rows [row_start, row_end) of a tensor (along dim 0) as a new float32 array."""
        meta = self.tensors[name]
        npdt, isz = _ST_DTYPES[meta.dtype]
        if not meta.shape:  # scalar
            row_start, row_end, rest = 0, 1, ()
        else:
            row_end = meta.shape[0] if row_end is None else row_end
            rest = meta.shape[1:]
        row_elems = math.prod(rest)
        n = (row_end - row_start) * row_elems
        out_shape = (row_end - row_start, *rest) if meta.shape else ()
        if n == 0:
            return np.zeros(out_shape, np.float32)
        mm = np.memmap(self.path, dtype=npdt, mode="r", offset=meta.start + row_start * row_elems * isz, shape=(n,))
        try:
            if meta.dtype == "BF16":
                out = (mm.astype(np.uint32) << 16).view(np.float32)
            else:
                out = mm.astype(np.float32)
        finally:
            del mm  # unmap now so mapped pages do not accumulate in RSS
        return out.reshape(out_shape)


# ---------------------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------------------

_LAYER_RENAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_RE_LAYER = re.compile(r"^(talker\.model|talker\.code_predictor\.model)\.layers\.(\d+)\.(.+)$")
_RE_CP_EMB = re.compile(r"^talker\.code_predictor\.model\.codec_embedding\.(\d+)\.weight$")
_RE_CP_HEAD = re.compile(r"^talker\.code_predictor\.lm_head\.(\d+)\.weight$")
_RE_DEC_CB = re.compile(r"^decoder\.quantizer\.rvq_(first|rest)\.vq\.layers\.(\d+)\._codebook\.(embedding_sum|cluster_usage)$")
_RE_ENC_CB = re.compile(
    r"^encoder\.quantizer\.(semantic|acoustic)_residual_vector_quantizer\.layers\.(\d+)\.codebook\.(embed_sum|cluster_usage|initialized)$")
_RE_ENC_PROJ = re.compile(r"^encoder\.quantizer\.(semantic|acoustic)_residual_vector_quantizer\.(input|output)_proj\.weight$")
_MAIN_FIXED = {
    "talker.model.text_embedding.weight": "talker.text_embd.weight",
    "talker.text_projection.linear_fc1.weight": "talker.text_proj.fc1.weight",
    "talker.text_projection.linear_fc1.bias": "talker.text_proj.fc1.bias",
    "talker.text_projection.linear_fc2.weight": "talker.text_proj.fc2.weight",
    "talker.text_projection.linear_fc2.bias": "talker.text_proj.fc2.bias",
    "talker.model.codec_embedding.weight": "talker.codec_embd.weight",
    "talker.model.norm.weight": "talker.output_norm.weight",
    "talker.codec_head.weight": "talker.codec_head.weight",
    "talker.code_predictor.model.norm.weight": "cp.output_norm.weight",
    "talker.code_predictor.small_to_mtp_projection.weight": "cp.input_proj.weight",
    "talker.code_predictor.small_to_mtp_projection.bias": "cp.input_proj.bias",
}


def _codec_rename(rest: str) -> str:
    return (rest.replace("pre_transformer.", "tf.").replace("encoder_transformer.", "tf.")
            .replace("self_attn_layer_scale.scale", "attn_ls").replace("mlp_layer_scale.scale", "mlp_ls")
            .replace("self_attn.", "attn."))


def gguf_tensor_name(name: str, n_enc_acoustic: int = 15) -> str | None:
    """GGUF name of a checkpoint tensor (docs/gguf.md), or None if the tensor is dropped.

    Codebook halves (``embedding_sum``/``cluster_usage``) both map to the folded codebook's name.
    Raises KeyError for a name outside the known layout.
    """
    if name.endswith(".initialized"):
        return None
    if name in _MAIN_FIXED:
        return _MAIN_FIXED[name]
    m = _RE_LAYER.match(name)
    if m:
        if m.group(3) not in _LAYER_RENAMES:
            raise KeyError(name)
        prefix = "talker" if m.group(1) == "talker.model" else "cp"
        return f"{prefix}.blk.{m.group(2)}.{_LAYER_RENAMES[m.group(3)]}"
    m = _RE_CP_EMB.match(name)
    if m:
        return f"cp.codec_embd.{m.group(1)}.weight"
    m = _RE_CP_HEAD.match(name)
    if m:
        return f"cp.head.{m.group(1)}.weight"
    if name.startswith("speaker_encoder."):
        return "spk." + name[len("speaker_encoder."):]
    m = _RE_DEC_CB.match(name)
    if m:
        j = int(m.group(2)) + (0 if m.group(1) == "first" else 1)
        return f"codec.dec.codebook.{j}.weight"
    if re.match(r"^decoder\.quantizer\.rvq_(first|rest)\.input_proj\.weight$", name):
        return None
    m = re.match(r"^decoder\.quantizer\.rvq_(first|rest)\.output_proj\.weight$", name)
    if m:
        return f"codec.dec.rvq_{m.group(1)}.output_proj.weight"
    m = _RE_ENC_CB.match(name)
    if m:
        j = int(m.group(2))
        if m.group(1) == "semantic":
            return f"codec.enc.rvq_sem.codebook.{j}.weight"
        return f"codec.enc.rvq_ac.codebook.{j}.weight" if j < n_enc_acoustic else None
    m = _RE_ENC_PROJ.match(name)
    if m:
        return f"codec.enc.rvq_{'sem' if m.group(1) == 'semantic' else 'ac'}.{m.group(2)}_proj.weight"
    if name.startswith("decoder.quantizer.") or name.startswith("encoder.quantizer."):
        raise KeyError(name)
    if name.startswith("decoder."):
        return "codec.dec." + _codec_rename(name[len("decoder."):])
    if name.startswith("encoder."):
        return "codec.enc." + _codec_rename(name[len("encoder."):])
    raise KeyError(name)


# ---------------------------------------------------------------------------------------------------------------
# Expected tensor sets (from the configs)
# ---------------------------------------------------------------------------------------------------------------

def expected_main_tensors(cfg: dict, with_speaker_encoder: bool) -> dict[str, tuple[int, ...] | None]:
    """Checkpoint tensor names of model.safetensors implied by config.json, with the expected shape where known."""
    t = cfg["talker_config"]
    c = t["code_predictor_config"]
    exp: dict[str, tuple[int, ...] | None] = {}

    def layers(prefix: str, lc: dict) -> None:
        d, f = lc["hidden_size"], lc["intermediate_size"]
        h, kv = lc["num_attention_heads"], lc["num_key_value_heads"]
        hd = lc.get("head_dim") or d // h
        shapes = {
            "input_layernorm.weight": (d,), "self_attn.q_proj.weight": (h * hd, d),
            "self_attn.k_proj.weight": (kv * hd, d), "self_attn.v_proj.weight": (kv * hd, d),
            "self_attn.o_proj.weight": (d, h * hd), "self_attn.q_norm.weight": (hd,),
            "self_attn.k_norm.weight": (hd,), "post_attention_layernorm.weight": (d,),
            "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f),
        }
        for i in range(lc["num_hidden_layers"]):
            for k, s in shapes.items():
                exp[f"{prefix}.layers.{i}.{k}"] = s
        exp[f"{prefix}.norm.weight"] = (d,)

    D, Dc, Dt = t["hidden_size"], c["hidden_size"], t["text_hidden_size"]
    exp["talker.model.text_embedding.weight"] = (t["text_vocab_size"], Dt)
    exp["talker.text_projection.linear_fc1.weight"] = (Dt, Dt)
    exp["talker.text_projection.linear_fc1.bias"] = (Dt,)
    exp["talker.text_projection.linear_fc2.weight"] = (D, Dt)
    exp["talker.text_projection.linear_fc2.bias"] = (D,)
    exp["talker.model.codec_embedding.weight"] = (t["vocab_size"], D)
    layers("talker.model", t)
    exp["talker.codec_head.weight"] = (t["vocab_size"], D)
    layers("talker.code_predictor.model", c)
    for j in range(c["num_code_groups"] - 1):
        exp[f"talker.code_predictor.model.codec_embedding.{j}.weight"] = (c["vocab_size"], D)
        exp[f"talker.code_predictor.lm_head.{j}.weight"] = (c["vocab_size"], Dc)
    if Dc != D:
        exp["talker.code_predictor.small_to_mtp_projection.weight"] = (Dc, D)
        exp["talker.code_predictor.small_to_mtp_projection.bias"] = (Dc,)
    if with_speaker_encoder:
        s = _speaker_encoder_config(cfg)
        ch = s["enc_channels"]
        names = ["blocks.0.conv"]
        for b in range(1, len(ch) - 1):
            names += [f"blocks.{b}.tdnn1.conv", f"blocks.{b}.tdnn2.conv", f"blocks.{b}.se_block.conv1",
                      f"blocks.{b}.se_block.conv2"]
            names += [f"blocks.{b}.res2net_block.blocks.{k}.conv" for k in range(s["enc_res2net_scale"] - 1)]
        names += ["mfa.conv", "asp.tdnn.conv", "asp.conv", "fc"]
        for n in names:
            exp[f"speaker_encoder.{n}.weight"] = None
            exp[f"speaker_encoder.{n}.bias"] = None
    return exp


def expected_codec_tensors(ccfg: dict) -> set[str]:
    """Checkpoint tensor names of speech_tokenizer/model.safetensors implied by its config.json."""
    dc, ec = ccfg["decoder_config"], ccfg["encoder_config"]
    exp: set[str] = set()
    wb = lambda p: {f"{p}.weight", f"{p}.bias"}  # noqa: E731
    # decoder
    cb = "decoder.quantizer.rvq_{}.vq.layers.{}._codebook.{}"
    exp |= {cb.format("first", 0, k) for k in ("embedding_sum", "cluster_usage")}
    exp |= {cb.format("rest", j, k) for j in range(dc["num_quantizers"] - 1) for k in ("embedding_sum", "cluster_usage")}
    exp |= {f"decoder.quantizer.rvq_{a}.{b}_proj.weight" for a in ("first", "rest") for b in ("input", "output")}
    exp |= wb("decoder.pre_conv.conv")
    exp |= wb("decoder.pre_transformer.input_proj") | wb("decoder.pre_transformer.output_proj")
    exp.add("decoder.pre_transformer.norm.weight")
    for i in range(dc["num_hidden_layers"]):
        p = f"decoder.pre_transformer.layers.{i}."
        exp |= {p + k for k in ("input_layernorm.weight", "post_attention_layernorm.weight",
                                "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                "self_attn.o_proj.weight", "self_attn_layer_scale.scale", "mlp.gate_proj.weight",
                                "mlp.up_proj.weight", "mlp.down_proj.weight", "mlp_layer_scale.scale")}
    for s in range(len(dc["upsampling_ratios"])):
        p = f"decoder.upsample.{s}."
        exp |= wb(p + "0.conv") | wb(p + "1.dwconv.conv") | wb(p + "1.norm") | wb(p + "1.pwconv1") | wb(p + "1.pwconv2")
        exp.add(p + "1.gamma")
    nb = len(dc["upsample_rates"])
    exp |= wb("decoder.decoder.0.conv")
    for b in range(1, nb + 1):
        p = f"decoder.decoder.{b}.block."
        exp |= {p + "0.alpha", p + "0.beta"} | wb(p + "1.conv")
        for r in (2, 3, 4):
            exp |= {f"{p}{r}.act1.alpha", f"{p}{r}.act1.beta", f"{p}{r}.act2.alpha", f"{p}{r}.act2.beta"}
            exp |= wb(f"{p}{r}.conv1.conv") | wb(f"{p}{r}.conv2.conv")
    exp |= {f"decoder.decoder.{nb + 1}.alpha", f"decoder.decoder.{nb + 1}.beta"} | wb(f"decoder.decoder.{nb + 2}.conv")
    # encoder (transformers MimiModel, encoder half)
    idx = 0
    exp |= wb(f"encoder.encoder.layers.{idx}.conv")
    idx += 1
    for _ in ec["upsampling_ratios"]:
        for _ in range(ec.get("num_residual_layers", 1)):
            exp |= wb(f"encoder.encoder.layers.{idx}.block.1.conv") | wb(f"encoder.encoder.layers.{idx}.block.3.conv")
            if ec.get("use_conv_shortcut", False):
                exp |= wb(f"encoder.encoder.layers.{idx}.shortcut.conv")
            idx += 1
        idx += 1  # ELU
        exp |= wb(f"encoder.encoder.layers.{idx}.conv")
        idx += 1
    idx += 1  # ELU
    exp |= wb(f"encoder.encoder.layers.{idx}.conv")
    for i in range(ec["num_hidden_layers"]):
        p = f"encoder.encoder_transformer.layers.{i}."
        exp |= {p + f"self_attn.{k}_proj.weight" for k in "qkvo"}
        exp |= {p + "mlp.fc1.weight", p + "mlp.fc2.weight", p + "self_attn_layer_scale.scale", p + "mlp_layer_scale.scale"}
        exp |= wb(p + "input_layernorm") | wb(p + "post_attention_layernorm")
    exp.add("encoder.downsample.conv.weight")
    nsem = ec.get("num_semantic_quantizers", 1)
    for kind, n in (("semantic", nsem), ("acoustic", ec["num_quantizers"] - nsem)):
        p = f"encoder.quantizer.{kind}_residual_vector_quantizer."
        exp |= {p + "input_proj.weight", p + "output_proj.weight"}
        exp |= {f"{p}layers.{j}.codebook.{k}" for j in range(n) for k in ("embed_sum", "cluster_usage", "initialized")}
    return exp


def _check_tensor_set(path: Path, have: Sequence[str], expected: set[str] | dict, what: str,
                      optional: Callable[[str], bool] = lambda n: False) -> None:
    have_set = set(have)
    missing = sorted(set(expected) - have_set)
    unknown = sorted(n for n in have_set - set(expected) if not optional(n))

    def lst(names: list[str]) -> str:
        return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")

    if missing:
        raise ConversionError(f"{path} lacks {len(missing)} tensor(s) that {what} requires: {lst(missing)}.")
    if unknown:
        raise ConversionError(f"{path} has {len(unknown)} unexpected tensor(s) for {what}: {lst(unknown)}.")


# ---------------------------------------------------------------------------------------------------------------
# Type policy
# ---------------------------------------------------------------------------------------------------------------

_RE_MATMUL = re.compile(
    r"^(?:(?:talker|cp)\.blk\.\d+\.(?:attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight"
    r"|talker\.codec_head\.weight|cp\.head\.\d+\.weight|talker\.text_proj\.fc[12]\.weight|cp\.input_proj\.weight)$")
_RE_CODEC_EMB = re.compile(r"^(?:talker\.codec_embd\.weight|cp\.codec_embd\.\d+\.weight)$")
_RE_CODEC_DEC_MATMUL = re.compile(
    r"^codec\.dec\.(?:tf\.layers\.\d+\.(?:attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.weight"
    r"|tf\.(?:input|output)_proj\.weight|rvq_(?:first|rest)\.output_proj\.weight|pre_conv\.conv\.weight"
    r"|upsample\.\d+\.(?:1\.pwconv[12]|0\.conv)\.weight|decoder\.\d+\.conv\.weight|decoder\.\d+\.block\.1\.conv\.weight"
    r"|decoder\.\d+\.block\.\d+\.conv[12]\.conv\.weight)$")


def policy_type(gguf_name: str, shape: Sequence[int], qtype: str) -> QT:
    """Storage type of a tensor before the block-size fallback (see the module docstring)."""
    mm, text_emb, codec_emb, _ = QTYPES[qtype]
    if len(shape) <= 1:
        return QT.F32
    if _RE_MATMUL.match(gguf_name):
        return mm
    if gguf_name == "talker.text_embd.weight":
        return text_emb
    if _RE_CODEC_EMB.match(gguf_name):
        return codec_emb
    if _RE_CODEC_DEC_MATMUL.match(gguf_name):
        return QT.F32 if qtype == "f32" else QT.BF16
    return QT.F32


def fit_type(t: QT, row_len: int) -> QT:
    while t in _QUANTIZED and row_len % gguf.GGML_QUANT_SIZES[t][0] != 0:
        t = _FALLBACK[t]
    return t


def _fallback_note(a: QT, b: QT, n: int) -> str:
    skipped = []
    t = a
    while t != b:
        skipped.append(f"{gguf.GGML_QUANT_SIZES[t][0]} ({t.name})")
        t = _FALLBACK[t]
    if len(skipped) == 1:
        why = f"is not a multiple of {skipped[0]}"
    else:
        why = "is a multiple of neither " + " nor ".join(skipped)
    return f"{n} tensor(s) have a row length that {why}; stored as {b.name} instead"


def tensor_nbytes(t: QT, shape: Sequence[int]) -> int:
    block, tsize = gguf.GGML_QUANT_SIZES[t]
    n = math.prod(shape)
    assert n % block == 0
    return n // block * tsize


# ---------------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------------

F16_MAX = 65504.0


def _to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), round to nearest even, NaN kept quiet (as ggml_compute_fp32_to_bf16)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        r[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(64)).astype(np.uint16)
    return r


@dataclass
class _Job:
    """One output tensor: its GGUF name, shape (PyTorch order), type and how to produce its float32 rows."""
    name: str
    shape: tuple[int, ...]
    type: QT
    read: Callable[[int, int], np.ndarray]  # rows [a, b) as float32
    nbytes: int = 0

    @property
    def nrows(self) -> int:
        return self.shape[0] if len(self.shape) > 0 else 1


def _engine_module():
    """The compiled extension (ggml's own quantizers), imported lazily; _native preloads the ggml libraries."""
    try:
        from wyoming_qwen3tts._native import _engine
    except ModuleNotFoundError as e:
        if e.name != "wyoming_qwen3tts._native":
            raise
        from wyoming_qwen3tts import _engine
    return _engine


def _quantize_rows(x: np.ndarray, t: QT) -> np.ndarray:
    x2 = np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.float32)
    q = np.asarray(_engine_module().quantize(x2, int(t)))
    block, tsize = gguf.GGML_QUANT_SIZES[t]
    want = (x2.shape[0], x2.shape[1] // block * tsize)
    if q.dtype != np.uint8 or q.shape != want:
        raise RuntimeError(f"_engine.quantize returned {q.dtype} {q.shape}, expected uint8 {want}")
    return q


class _Stream:
    """Duck-typed ndarray for GGUFWriter.write_tensor_data: writes the tensor chunk by chunk."""

    def __init__(self, job: _Job, on_bytes: Callable[[int], None], notes: dict):
        self.job = job
        self.nbytes = job.nbytes
        self.on_bytes = on_bytes
        self.notes = notes

    def _convert(self, x: np.ndarray) -> np.ndarray:
        t = self.job.type
        if t == QT.F32:
            return x
        if t == QT.F16:
            big = np.abs(x) > F16_MAX
            if big.any():
                n = int(np.count_nonzero(big & np.isfinite(x)))
                if n:
                    self.notes.setdefault("f16_clamped", set()).add(self.job.name)
                x = np.where(np.isfinite(x), np.clip(x, -F16_MAX, F16_MAX), x)
            return x.astype(np.float16)
        if t == QT.BF16:
            return _to_bf16(x)
        return _quantize_rows(x, t)

    def tofile(self, fout) -> None:
        job = self.job
        rows = job.nrows
        row_bytes = max(1, math.prod(job.shape[1:]) * 4) if len(job.shape) > 1 else 4
        step = max(1, CHUNK_BYTES // row_bytes) if len(job.shape) > 1 else rows
        written = 0
        for a in range(0, rows, step):
            b = min(rows, a + step)
            out = np.ascontiguousarray(self._convert(job.read(a, b)))
            fout.write(memoryview(out).cast("B"))
            written += out.nbytes
            self.on_bytes(out.nbytes)
        if written != self.nbytes:
            raise RuntimeError(f"{job.name}: wrote {written} bytes, expected {self.nbytes}")


def _read_json(path: Path) -> tuple[dict, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConversionError(f"{path} is missing (is {path.parent} a Qwen3-TTS checkpoint directory?).") from None
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {e.strerror or e}.") from e
    try:
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise ConversionError(f"{path} is not valid JSON ({e}).") from e
    return d, text


def _get(d: dict, key: str, where: str):
    if key not in d or d[key] is None:
        raise ConversionError(f"{where} lacks the key {key!r}.")
    return d[key]


def _speaker_encoder_config(cfg: dict) -> dict:
    s = dict(SPEAKER_ENCODER_DEFAULTS)
    s.update({k: v for k, v in (cfg.get("speaker_encoder_config") or {}).items() if v is not None})
    return s


class _KV:
    """Typed metadata collection written through GGUFWriter.add_key_value."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[object, VT, VT | None]] = {}

    def add(self, key: str, val, vt: VT, sub: VT | None = None) -> None:
        if vt == VT.ARRAY:
            val = list(val)
            if not val:  # gguf-py cannot write empty arrays: an absent key means "empty"
                return
        self.items[key] = (val, vt, sub)

    def u32(self, key: str, v) -> None:
        v = int(v)
        if v < 0:
            raise ConversionError(f"metadata {key} = {v} is negative.")
        self.add(key, v, VT.UINT32)

    def f32(self, key: str, v) -> None:
        self.add(key, float(v), VT.FLOAT32)

    def s(self, key: str, v) -> None:
        self.add(key, str(v), VT.STRING)

    def b(self, key: str, v) -> None:
        self.add(key, bool(v), VT.BOOL)

    def i32s(self, key: str, v) -> None:
        self.add(key, [int(x) for x in v], VT.ARRAY, VT.INT32)

    def strs(self, key: str, v) -> None:
        self.add(key, [str(x) for x in v], VT.ARRAY, VT.STRING)

    def generic(self, key: str, v) -> None:
        """Type from the Python value: str, bool, int (u32, i32 if negative), float (f32), lists thereof."""
        if isinstance(v, str):
            self.s(key, v)
        elif isinstance(v, bool):
            self.b(key, v)
        elif isinstance(v, (int, np.integer)):
            self.add(key, int(v), VT.UINT32 if v >= 0 else VT.INT32)
        elif isinstance(v, (float, np.floating)):
            self.f32(key, v)
        elif isinstance(v, (list, tuple, np.ndarray)):
            v = list(v)
            if all(isinstance(x, str) for x in v):
                self.strs(key, v)
            elif all(isinstance(x, bool) for x in v):
                self.add(key, [bool(x) for x in v], VT.ARRAY, VT.BOOL)
            elif all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v):
                self.i32s(key, v)
            elif all(isinstance(x, (int, float, np.integer, np.floating)) for x in v):
                self.add(key, [float(x) for x in v], VT.ARRAY, VT.FLOAT32)
            else:
                raise ConversionError(f"metadata {key} holds a list of mixed types.")
        else:
            raise ConversionError(f"metadata {key} has an unsupported type {type(v).__name__}.")


_TOKENIZER_TYPES = {
    "tokenizer.ggml.model": (VT.STRING, None),
    "tokenizer.ggml.pre": (VT.STRING, None),
    "tokenizer.ggml.tokens": (VT.ARRAY, VT.STRING),
    "tokenizer.ggml.token_type": (VT.ARRAY, VT.INT32),
    "tokenizer.ggml.merges": (VT.ARRAY, VT.STRING),
    "tokenizer.ggml.eos_token_id": (VT.UINT32, None),
    "tokenizer.ggml.padding_token_id": (VT.UINT32, None),
    "tokenizer.ggml.bos_token_id": (VT.UINT32, None),
    "tokenizer.ggml.unknown_token_id": (VT.UINT32, None),
    "tokenizer.ggml.add_bos_token": (VT.BOOL, None),
    "tokenizer.ggml.add_eos_token": (VT.BOOL, None),
    "qwen3-tts.tokenizer.pre_regex": (VT.STRING, None),
}
_TOKENIZER_REQUIRED = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
                       "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id",
                       "tokenizer.ggml.padding_token_id", "qwen3-tts.tokenizer.pre_regex")


def _add_tokenizer(kv: _KV, ckpt: Path) -> None:
    try:
        from wyoming_qwen3tts.tokenizer import tokenizer_metadata
    except ImportError as e:
        raise ConversionError(f"the text tokenizer module is unavailable ({e}).") from e
    try:
        meta = tokenizer_metadata(ckpt)
    except ConversionError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure reading the tokenizer files is a user-facing error
        raise ConversionError(f"cannot read the text tokenizer in {ckpt}: {str(e).rstrip('.')}.") from e
    missing = [k for k in _TOKENIZER_REQUIRED if k not in meta]
    if missing:
        raise ConversionError(f"the text tokenizer metadata lacks {', '.join(missing)}.")
    for key, val in meta.items():
        if key in _TOKENIZER_TYPES:
            vt, sub = _TOKENIZER_TYPES[key]
            if vt == VT.ARRAY:
                conv = str if sub == VT.STRING else int
                kv.add(key, [conv(x) for x in val], vt, sub)
            elif vt == VT.UINT32:
                kv.u32(key, val)
            elif vt == VT.BOOL:
                kv.b(key, val)
            else:
                kv.s(key, val)
        else:
            kv.generic(key, val)


def _codec_config_kv(kv: _KV, prefix: str, d: dict) -> None:
    """Every numeric key (int, float, list of numbers) of a codec sub-config; bools and strings are skipped."""
    for k, v in d.items():
        key = f"{prefix}.{k}"
        if isinstance(v, bool) or v is None or isinstance(v, (str, dict)):
            continue
        if isinstance(v, list):
            if v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                kv.i32s(key, v)
            elif v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                kv.add(key, [float(x) for x in v], VT.ARRAY, VT.FLOAT32)
            continue
        if k in _FLOAT_KEYS or isinstance(v, float):
            kv.f32(key, v)
        elif v >= 0:
            kv.u32(key, v)
        else:
            kv.add(key, int(v), VT.INT32)


def _collect_metadata(kv: _KV, ckpt: Path, cfg: dict, cfg_text: str, ccfg: dict, ccfg_text: str, gen: dict,
                      qtype: str, has_spk: bool) -> None:
    kv.s("general.name", checkpoint_name(ckpt))
    kv.u32("general.file_type", QTYPES[qtype][3])
    kv.u32("general.quantization_version", gguf.GGML_QUANT_VERSION)
    kv.s("qwen3-tts.model_type", _get(cfg, "tts_model_type", "config.json"))
    kv.s("qwen3-tts.model_size", _get(cfg, "tts_model_size", "config.json"))
    kv.s("qwen3-tts.config_json", cfg_text)
    kv.s("qwen3-tts.codec.config_json", ccfg_text)
    for k, src in (("im_start_id", "im_start_token_id"), ("im_end_id", "im_end_token_id"),
                   ("assistant_id", "assistant_token_id"), ("tts_pad_id", "tts_pad_token_id"),
                   ("tts_bos_id", "tts_bos_token_id"), ("tts_eos_id", "tts_eos_token_id")):
        kv.u32(f"qwen3-tts.text.{k}", _get(cfg, src, "config.json"))

    t = cfg["talker_config"]
    c = t["code_predictor_config"]
    for pre, lc, where in (("qwen3-tts.talker", t, "talker_config"),
                           ("qwen3-tts.code_predictor", c, "code_predictor_config")):
        kv.u32(f"{pre}.block_count", _get(lc, "num_hidden_layers", where))
        kv.u32(f"{pre}.embedding_length", _get(lc, "hidden_size", where))
        kv.u32(f"{pre}.feed_forward_length", _get(lc, "intermediate_size", where))
        kv.u32(f"{pre}.attention.head_count", _get(lc, "num_attention_heads", where))
        kv.u32(f"{pre}.attention.head_count_kv", _get(lc, "num_key_value_heads", where))
        kv.u32(f"{pre}.attention.key_length", lc.get("head_dim") or lc["hidden_size"] // lc["num_attention_heads"])
        kv.f32(f"{pre}.attention.layer_norm_rms_epsilon", _get(lc, "rms_norm_eps", where))
        kv.f32(f"{pre}.rope.freq_base", _get(lc, "rope_theta", where))
        kv.u32(f"{pre}.vocab_size", _get(lc, "vocab_size", where))
        kv.u32(f"{pre}.num_code_groups", _get(lc, "num_code_groups", where))
    kv.u32("qwen3-tts.talker.text_vocab_size", _get(t, "text_vocab_size", "talker_config"))
    kv.u32("qwen3-tts.talker.text_embedding_length", _get(t, "text_hidden_size", "talker_config"))
    for k, src in (("pad_id", "codec_pad_id"), ("bos_id", "codec_bos_id"), ("eos_id", "codec_eos_token_id"),
                   ("think_id", "codec_think_id"), ("nothink_id", "codec_nothink_id"),
                   ("think_bos_id", "codec_think_bos_id"), ("think_eos_id", "codec_think_eos_id")):
        kv.u32(f"qwen3-tts.talker.codec.{k}", _get(t, src, "talker_config"))

    langs = t.get("codec_language_id") or {}
    kv.strs("qwen3-tts.languages", list(langs))
    kv.i32s("qwen3-tts.language_ids", list(langs.values()))
    spk = t.get("spk_id") or {}
    dia = t.get("spk_is_dialect") or {}
    kv.strs("qwen3-tts.speakers", [n.lower() for n in spk])
    kv.i32s("qwen3-tts.speaker_ids", list(spk.values()))
    kv.strs("qwen3-tts.speaker_dialects", [dia.get(n) if isinstance(dia.get(n), str) else "" for n in spk])

    g = {**REFERENCE_GENERATION_DEFAULTS, **{k: v for k, v in gen.items() if v is not None}}
    sub_sample = gen.get("subtalker_dosample", gen.get("subtalker_do_sample",
                                                       REFERENCE_GENERATION_DEFAULTS["subtalker_do_sample"]))
    kv.b("qwen3-tts.generation.do_sample", g["do_sample"])
    kv.b("qwen3-tts.generation.subtalker_do_sample", sub_sample)
    for k in ("temperature", "top_p", "repetition_penalty", "subtalker_temperature", "subtalker_top_p"):
        kv.f32(f"qwen3-tts.generation.{k}", g[k])
    for k in ("top_k", "subtalker_top_k", "max_new_tokens"):
        kv.u32(f"qwen3-tts.generation.{k}", g[k])

    if has_spk:
        s = _speaker_encoder_config(cfg)
        for k, src in (("mel_dim", "mel_dim"), ("enc_dim", "enc_dim"), ("attention_channels", "enc_attention_channels"),
                       ("res2net_scale", "enc_res2net_scale"), ("se_channels", "enc_se_channels"),
                       ("sample_rate", "sample_rate")):
            kv.u32(f"qwen3-tts.speaker_encoder.{k}", s[src])
        for k, src in (("channels", "enc_channels"), ("kernel_sizes", "enc_kernel_sizes"), ("dilations", "enc_dilations")):
            kv.i32s(f"qwen3-tts.speaker_encoder.{k}", s[src])

    kv.u32("qwen3-tts.codec.sample_rate", _get(ccfg, "output_sample_rate", "speech_tokenizer/config.json"))
    kv.u32("qwen3-tts.codec.upsample_rate", _get(ccfg, "decode_upsample_rate", "speech_tokenizer/config.json"))
    kv.u32("qwen3-tts.codec.encoder_valid_num_quantizers",
           _get(ccfg, "encoder_valid_num_quantizers", "speech_tokenizer/config.json"))
    _codec_config_kv(kv, "qwen3-tts.codec.decoder", ccfg["decoder_config"])
    _codec_config_kv(kv, "qwen3-tts.codec.encoder", ccfg["encoder_config"])


def checkpoint_name(ckpt: Path) -> str:
    """The checkpoint directory's name; for a Hugging Face cache snapshot
    (``models--Qwen--Qwen3-TTS-12Hz-0.6B-Base/snapshots/<hash>``) the repository's name."""
    if ckpt.parent.name == "snapshots" and ckpt.parent.parent.name.startswith("models--"):
        return ckpt.parent.parent.name.split("--")[-1]
    return ckpt.name


def _check_model_types(cfg: dict, ccfg: dict, ckpt: Path) -> None:
    mt = cfg.get("model_type")
    if mt != "qwen3_tts":
        raise ConversionError(f"{ckpt / 'config.json'} has model_type {mt!r}, not 'qwen3_tts': this is not a Qwen3-TTS checkpoint.")
    tt = cfg.get("tokenizer_type")
    if tt != "qwen3_tts_tokenizer_12hz":
        raise ConversionError(f"{ckpt.name} is a {tt} model (config.json tokenizer_type); only the 12 Hz models "
                              f"(qwen3_tts_tokenizer_12hz) are supported.")
    cmt = ccfg.get("model_type")
    if cmt != "qwen3_tts_tokenizer_12hz":
        kind = f"a {cmt} model" if isinstance(cmt, str) else "not a Qwen3-TTS speech tokenizer"
        raise ConversionError(f"{ckpt / 'speech_tokenizer'} is {kind}; only the 12 Hz models (qwen3_tts_tokenizer_12hz) are supported.")
    for where, d, keys in (("config.json", cfg, ("talker_config",)),
                           ("talker_config", cfg.get("talker_config") or {}, ("code_predictor_config",)),
                           ("speech_tokenizer/config.json", ccfg, ("decoder_config", "encoder_config"))):
        for k in keys:
            if not isinstance(d.get(k), dict):
                raise ConversionError(f"{where} lacks the {k!r} section.")


def _fold(st: SafetensorsFile, sum_name: str, usage_name: str) -> Callable[[int, int], np.ndarray]:
    def read(a: int, b: int) -> np.ndarray:
        es = st.read(sum_name, a, b)
        cu = st.read(usage_name, a, b)
        return es / np.maximum(cu, np.float32(1e-5))[:, None]
    return read


def _plan(main: SafetensorsFile, codec: SafetensorsFile, qtype: str, n_enc_ac: int) -> list[_Job]:
    jobs: list[_Job] = []
    for st in (main, codec):
        for meta in sorted(st.tensors.values(), key=lambda m: m.start):
            name = gguf_tensor_name(meta.name, n_enc_ac)
            if name is None:
                continue
            if meta.name.endswith(("cluster_usage",)):
                continue  # folded into the embedding_sum's job
            if len(name) > MAX_NAME_LEN:
                raise ConversionError(f"tensor name {name!r} is longer than ggml's {MAX_NAME_LEN} characters.")
            if meta.name.endswith(("embedding_sum", "embed_sum")):
                usage = meta.name.rsplit(".", 1)[0] + ".cluster_usage"
                if usage not in st:
                    raise ConversionError(f"{st.path} lacks {usage}.")
                u = st.tensors[usage]
                if len(meta.shape) != 2 or u.shape != meta.shape[:1]:
                    raise ConversionError(f"{st.path}: codebook {meta.name} {list(meta.shape)} does not match "
                                          f"{usage} {list(u.shape)}.")
                jobs.append(_Job(name, meta.shape, QT.F32, _fold(st, meta.name, usage)))
                continue
            t = policy_type(name, meta.shape, qtype)
            jobs.append(_Job(name, meta.shape, t, (lambda s, n: (lambda a, b: s.read(n, a, b)))(st, meta.name)))
    return jobs


def _write(writer: gguf.GGUFWriter, kv: "_KV", jobs: list[_Job], bar, notes: dict) -> None:
    """GGUFWriter's streaming API: all tensor infos (final byte sizes) first, then the data one tensor at a time."""
    for key, (val, vt, sub) in kv.items.items():
        writer.add_key_value(key, val, vt, sub)
    for j in jobs:
        if j.type in _QUANTIZED:
            block, tsize = gguf.GGML_QUANT_SIZES[j.type]
            byte_shape = (*j.shape[:-1], j.shape[-1] // block * tsize)
            writer.add_tensor_info(j.name, byte_shape, np.dtype(np.uint8), j.nbytes, raw_dtype=j.type)
        else:
            npdt = {QT.F32: np.float32, QT.F16: np.float16, QT.BF16: np.uint16}[j.type]
            writer.add_tensor_info(j.name, j.shape, np.dtype(npdt), j.nbytes, raw_dtype=j.type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for j in jobs:
        bar.set_postfix_str(j.name, refresh=False)
        writer.write_tensor_data(_Stream(j, bar.update, notes))  # type: ignore[arg-type]
    writer.close()


def convert(checkpoint_dir: str | os.PathLike[str], out_path: str | os.PathLike[str], qtype: str = "f16",
            progress: bool = True) -> Path:
    """Convert CHECKPOINT_DIR into the GGUF file OUT_PATH; returns OUT_PATH. Raises ConversionError."""
    t0 = time.monotonic()
    qtype = str(qtype).lower()
    if qtype not in QTYPES:
        raise ConversionError(f"unknown --type {qtype!r}; choose one of {', '.join(QTYPES)}.")
    ckpt = Path(checkpoint_dir).resolve()
    out = Path(out_path)
    if not ckpt.is_dir():
        raise ConversionError(f"{checkpoint_dir} is not a directory.")

    cfg, cfg_text = _read_json(ckpt / "config.json")
    ccfg, ccfg_text = _read_json(ckpt / "speech_tokenizer" / "config.json")
    _check_model_types(cfg, ccfg, ckpt)
    gen = _read_generation_config(ckpt)
    main_st = SafetensorsFile(ckpt / "model.safetensors")
    codec_st = SafetensorsFile(ckpt / "speech_tokenizer" / "model.safetensors")
    has_spk = cfg.get("tts_model_type") == "base" or any(n.startswith("speaker_encoder.") for n in main_st.tensors)
    n_enc_ac = _check_tensors(ckpt, cfg, ccfg, main_st, codec_st, has_spk)

    kv = _KV()
    _collect_metadata(kv, ckpt, cfg, cfg_text, ccfg, ccfg_text, gen, qtype, has_spk)
    _add_tokenizer(kv, ckpt)
    jobs = _typed_jobs(_plan(main_st, codec_st, qtype, n_enc_ac), qtype)
    notes = _write_file(out, kv, jobs, progress)

    if notes.get("f16_clamped"):
        print(f"note: {len(notes['f16_clamped'])} tensor(s) had values beyond the F16 range; they were clamped to "
              f"+-{F16_MAX:g}", file=sys.stderr)
    if progress:
        size = out.stat().st_size
        print(f"wrote {out} ({size / 1e6:.1f} MB, {len(jobs)} tensors, {qtype}) in {time.monotonic() - t0:.1f} s",
              file=sys.stderr)
    return out


def _read_generation_config(ckpt: Path) -> dict:
    """generation_config.json (the reference's defaults where it is missing), after checking that every other
    file of the checkpoint is there."""
    if (ckpt / "generation_config.json").exists():
        gen, _ = _read_json(ckpt / "generation_config.json")
    else:
        gen = {}
        print(f"note: {ckpt / 'generation_config.json'} is missing; using the reference defaults", file=sys.stderr)
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "model.safetensors",
              "speech_tokenizer/model.safetensors"):
        if not (ckpt / f).is_file():
            raise ConversionError(f"{ckpt / f} is missing (the checkpoint directory is incomplete).")
    return gen


def _check_tensors(ckpt: Path, cfg: dict, ccfg: dict, main_st: SafetensorsFile, codec_st: SafetensorsFile,
                   has_spk: bool) -> int:
    """Check the tensors' names and shapes against the configurations; returns the number of acoustic codebooks
    the codec encoder uses."""
    try:
        exp_main = expected_main_tensors(cfg, has_spk)
        exp_codec = expected_codec_tensors(ccfg)
    except (KeyError, TypeError) as e:
        raise ConversionError(f"the checkpoint's configuration lacks the key {e}.") from e
    _check_tensor_set(ckpt / "model.safetensors", list(main_st.tensors), exp_main, "the config.json")
    for name, shape in exp_main.items():
        got = main_st.tensors[name].shape
        if shape is not None and got != shape:
            raise ConversionError(f"{ckpt / 'model.safetensors'}: {name} has shape {list(got)} but config.json implies "
                                  f"{list(shape)}.")
    n_enc_ac = (int(_get(ccfg, "encoder_valid_num_quantizers", "speech_tokenizer/config.json"))
                - ccfg["encoder_config"].get("num_semantic_quantizers", 1))
    # tensors the GGUF drops (encoder-side RVQ input projections of the decoder, `initialized` flags, the unused
    # acoustic codebooks past encoder_valid_num_quantizers) may be absent
    dropped = {n for n in exp_codec if gguf_tensor_name(n, n_enc_ac) is None}
    _check_tensor_set(ckpt / "speech_tokenizer" / "model.safetensors", list(codec_st.tensors), exp_codec - dropped,
                      "the speech_tokenizer/config.json", optional=dropped.__contains__)
    return n_enc_ac


def _typed_jobs(jobs: list[_Job], qtype: str) -> list[_Job]:
    """The planned tensors with the type each row length allows (a note per fallback) and their sizes; checks
    that the quantizer the types need can be imported."""
    fallbacks: dict[tuple[QT, QT], int] = {}
    for j in jobs:
        t = fit_type(j.type, j.shape[-1])
        if t != j.type:
            fallbacks[(j.type, t)] = fallbacks.get((j.type, t), 0) + 1
            j.type = t
        j.nbytes = tensor_nbytes(j.type, j.shape)
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise RuntimeError("duplicate GGUF tensor names")
    for (a, b), n in fallbacks.items():
        print(f"note: {_fallback_note(a, b, n)}", file=sys.stderr)
    if any(j.type in _QUANTIZED for j in jobs):
        try:
            _engine_module()
        except ImportError as e:
            raise ConversionError(f"--type {qtype} needs the compiled extension wyoming_qwen3tts._engine, which "
                                  f"cannot be imported ({e}); build the package first.") from e
    return jobs


def _write_file(out: Path, kv: _KV, jobs: list[_Job], progress: bool) -> dict:
    """Write the GGUF to OUT.part, then move it to OUT (no half-written OUT, whatever fails); returns the notes
    the writing left (e.g. tensors clamped to the F16 range)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConversionError(f"cannot create the directory {out.parent}: {e.strerror or e}.") from e
    tmp = out.with_name(out.name + ".part")
    notes: dict = {}
    total = sum(j.nbytes for j in jobs)
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="converting",
               disable=not (progress and sys.stderr.isatty()), leave=False)
    writer = gguf.GGUFWriter(tmp, ARCH)
    try:
        _write(writer, kv, jobs, bar, notes)
        os.replace(tmp, out)
    except OSError as e:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise ConversionError(f"writing {out} failed: {e.strerror or e}.") from e
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wyoming_qwen3tts.convert",
                                 description="Convert a Qwen3-TTS 12 Hz checkpoint directory into one GGUF file.")
    ap.add_argument("checkpoint_dir", help="Hugging Face checkpoint directory (config.json, model.safetensors, ...)")
    ap.add_argument("-o", "--output", help="output .gguf path (default: <checkpoint name>-<type>.gguf)")
    ap.add_argument("--type", default="f16", help=f"weight type: {', '.join(QTYPES)} (default f16)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar or summary line")
    args = ap.parse_args(argv)
    out = args.output or f"{checkpoint_name(Path(args.checkpoint_dir).resolve())}-{str(args.type).lower()}.gguf"
    try:
        convert(args.checkpoint_dir, out, args.type, progress=not args.no_progress)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
