#!/usr/bin/env python3
"""Write a full-size Qwen3-TTS 12 Hz checkpoint directory with random weights, without torch.

The layout is the released Hugging Face one:
  DIR/config.json, generation_config.json, model.safetensors (bf16),
  DIR/vocab.json, merges.txt, tokenizer_config.json          (copied from ../shared/reference/qwen2-tokenizer/)
  DIR/speech_tokenizer/config.json, preprocessor_config.json, model.safetensors (fp32)

Tensor names and shapes are derived from the config (docs/model-spec.md section 7); `--self-check` compares the
derived lists with the team's listing (shared/reference/shapes.txt, collapsed the same way as dump_shapes.py
does) and with the headers of the tiny fixtures in tests/fixtures/. Only numpy (+ tqdm for progress) is needed.

Values (for speed/realism of benchmarks, not quality): N(0, fan_in^-1/2) for matrices (x0.5 in the speech
tokenizer), 1 + N(0, 0.1) for norm gains, N(0, 0.02) for biases, U(0.1, 0.5) for LayerScale / ConvNeXt gamma,
N(0, 0.3) for SnakeBeta alpha/beta, U(0.5, 2) for cluster_usage, N(0, dim^-1/2) for codebook sums,
1 for Mimi's `initialized` flags.

Usage:
  python bench/make_random_checkpoint.py -o /tmp/full-06cv \
      --config /work/shared/reference/configs/Qwen3-TTS-12Hz-0.6B-CustomVoice.config.json
  python bench/make_random_checkpoint.py --self-check
"""
import argparse
import json
import math
import os
import re
import shutil
import struct
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

REPO = Path(__file__).resolve().parents[1]
TEXT_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
# The team's shared reference material lives beside the repository (CI clones it the same way).
SHARED_REF = REPO.parent / "shared" / "reference"
TEXT_TOKENIZER_DIR = SHARED_REF / "qwen2-tokenizer"
TOKENIZER_CONFIG_NAME = "Qwen3-TTS-Tokenizer-12Hz.config.json"
PREPROCESSOR_CONFIG = {"feature_extractor_type": "EncodecFeatureExtractor", "feature_size": 1, "sampling_rate": 24000,
                       "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True,
                       "chunk_length_s": None, "overlap": None}
# Qwen3TTSSpeakerEncoderConfig defaults (the released configs only give enc_dim and sample_rate)
SPEAKER_ENCODER_DEFAULTS = {"mel_dim": 128, "enc_dim": 1024, "enc_channels": [512, 512, 512, 512, 1536],
                            "enc_kernel_sizes": [5, 3, 3, 3, 1], "enc_dilations": [1, 2, 3, 4, 1],
                            "enc_attention_channels": 128, "enc_res2net_scale": 8, "enc_se_channels": 128}


# ----------------------------------------------------------------------------------------------
# Tensor lists (state-dict order), derived from the configs
# ----------------------------------------------------------------------------------------------
def _decoder_layer(prefix, hidden, ffn, heads, kv_heads, head_dim, qk_norm=True):
    t = OrderedDict()
    t[f"{prefix}.self_attn.q_proj.weight"] = (heads * head_dim, hidden)
    t[f"{prefix}.self_attn.k_proj.weight"] = (kv_heads * head_dim, hidden)
    t[f"{prefix}.self_attn.v_proj.weight"] = (kv_heads * head_dim, hidden)
    t[f"{prefix}.self_attn.o_proj.weight"] = (hidden, heads * head_dim)
    if qk_norm:
        t[f"{prefix}.self_attn.q_norm.weight"] = (head_dim,)
        t[f"{prefix}.self_attn.k_norm.weight"] = (head_dim,)
    t[f"{prefix}.mlp.gate_proj.weight"] = (ffn, hidden)
    t[f"{prefix}.mlp.up_proj.weight"] = (ffn, hidden)
    t[f"{prefix}.mlp.down_proj.weight"] = (hidden, ffn)
    t[f"{prefix}.input_layernorm.weight"] = (hidden,)
    t[f"{prefix}.post_attention_layernorm.weight"] = (hidden,)
    return t


def model_tensors(cfg):
    """name -> shape for model.safetensors (Qwen3TTSForConditionalGeneration.state_dict())."""
    tc, cc = cfg["talker_config"], cfg["talker_config"]["code_predictor_config"]
    H, Hc = tc["hidden_size"], cc["hidden_size"]
    t = OrderedDict()
    for i in range(tc["num_hidden_layers"]):
        t.update(_decoder_layer(f"talker.model.layers.{i}", H, tc["intermediate_size"], tc["num_attention_heads"],
                                tc["num_key_value_heads"], tc["head_dim"]))
    t["talker.model.norm.weight"] = (H,)
    t["talker.model.codec_embedding.weight"] = (tc["vocab_size"], H)
    t["talker.model.text_embedding.weight"] = (tc["text_vocab_size"], tc["text_hidden_size"])
    t["talker.text_projection.linear_fc1.weight"] = (tc["text_hidden_size"], tc["text_hidden_size"])
    t["talker.text_projection.linear_fc1.bias"] = (tc["text_hidden_size"],)
    t["talker.text_projection.linear_fc2.weight"] = (H, tc["text_hidden_size"])
    t["talker.text_projection.linear_fc2.bias"] = (H,)
    t["talker.codec_head.weight"] = (tc["vocab_size"], H)
    for i in range(cc["num_hidden_layers"]):
        t.update(_decoder_layer(f"talker.code_predictor.model.layers.{i}", Hc, cc["intermediate_size"],
                                cc["num_attention_heads"], cc["num_key_value_heads"], cc["head_dim"]))
    t["talker.code_predictor.model.norm.weight"] = (Hc,)
    for i in range(cc["num_code_groups"] - 1):    # inputs for codes 1..15 live at talker width
        t[f"talker.code_predictor.model.codec_embedding.{i}.weight"] = (cc["vocab_size"], H)
    for i in range(cc["num_code_groups"] - 1):
        t[f"talker.code_predictor.lm_head.{i}.weight"] = (cc["vocab_size"], Hc)
    if Hc != H:                                    # 1.7B: Linear; 0.6B: nn.Identity (no tensor)
        t["talker.code_predictor.small_to_mtp_projection.weight"] = (Hc, H)
        t["talker.code_predictor.small_to_mtp_projection.bias"] = (Hc,)
    if cfg.get("tts_model_type") == "base":        # CustomVoice / VoiceDesign have no speaker encoder
        t.update(speaker_encoder_tensors(dict(SPEAKER_ENCODER_DEFAULTS, **cfg.get("speaker_encoder_config", {}))))
    return t


def speaker_encoder_tensors(sc):
    """ECAPA-TDNN (Qwen3TTSSpeakerEncoder)."""
    C, K = sc["enc_channels"], sc["enc_kernel_sizes"]
    t = OrderedDict()

    def conv(name, cout, cin, k):
        t[f"speaker_encoder.{name}.weight"] = (cout, cin, k)
        t[f"speaker_encoder.{name}.bias"] = (cout,)

    conv("blocks.0.conv", C[0], sc["mel_dim"], K[0])
    scale, se = sc["enc_res2net_scale"], sc["enc_se_channels"]
    for i in range(1, len(C) - 1):
        conv(f"blocks.{i}.tdnn1.conv", C[i], C[i - 1], 1)
        for j in range(scale - 1):
            conv(f"blocks.{i}.res2net_block.blocks.{j}.conv", C[i] // scale, C[i] // scale, K[i])
        conv(f"blocks.{i}.tdnn2.conv", C[i], C[i], 1)
        conv(f"blocks.{i}.se_block.conv1", se, C[i], 1)
        conv(f"blocks.{i}.se_block.conv2", C[i], se, 1)
    conv("mfa.conv", C[-1], sum(C[1:-1]), K[-1])
    conv("asp.tdnn.conv", sc["enc_attention_channels"], C[-1] * 3, 1)
    conv("asp.conv", C[-1], sc["enc_attention_channels"], 1)
    conv("fc", sc["enc_dim"], C[-1] * 2, 1)
    return t


def speech_tokenizer_tensors(cfg):
    """name -> shape for speech_tokenizer/model.safetensors (Qwen3TTSTokenizerV2Model.state_dict())."""
    return OrderedDict([*_codec_encoder_tensors(cfg["encoder_config"]).items(),
                        *_codec_decoder_tensors(cfg["decoder_config"]).items()])


def _codec_encoder_tensors(e):
    """The encoder half (transformers Mimi naming)."""
    t = OrderedDict()
    nf, layer = e["num_filters"], 0
    t["encoder.encoder.layers.0.conv.weight"] = (nf, e["audio_channels"], e["kernel_size"])
    t["encoder.encoder.layers.0.conv.bias"] = (nf,)
    layer, ch = 1, nf
    for ratio in reversed(e["upsampling_ratios"]):
        for _ in range(e["num_residual_layers"]):
            hid = ch // e["compress"]
            t[f"encoder.encoder.layers.{layer}.block.1.conv.weight"] = (hid, ch, e["residual_kernel_size"])
            t[f"encoder.encoder.layers.{layer}.block.1.conv.bias"] = (hid,)
            t[f"encoder.encoder.layers.{layer}.block.3.conv.weight"] = (ch, hid, 1)
            t[f"encoder.encoder.layers.{layer}.block.3.conv.bias"] = (ch,)
            layer += 1
        layer += 1                                               # ELU
        t[f"encoder.encoder.layers.{layer}.conv.weight"] = (ch * 2, ch, ratio * 2)
        t[f"encoder.encoder.layers.{layer}.conv.bias"] = (ch * 2,)
        layer += 1
        ch *= 2
    layer += 1                                                   # ELU
    t[f"encoder.encoder.layers.{layer}.conv.weight"] = (e["hidden_size"], ch, e["last_kernel_size"])
    t[f"encoder.encoder.layers.{layer}.conv.bias"] = (e["hidden_size"],)
    He, hd = e["hidden_size"], e["head_dim"]
    for i in range(e["num_hidden_layers"]):
        p = f"encoder.encoder_transformer.layers.{i}"
        t[f"{p}.self_attn.q_proj.weight"] = (e["num_attention_heads"] * hd, He)
        t[f"{p}.self_attn.k_proj.weight"] = (e["num_key_value_heads"] * hd, He)
        t[f"{p}.self_attn.v_proj.weight"] = (e["num_key_value_heads"] * hd, He)
        t[f"{p}.self_attn.o_proj.weight"] = (He, e["num_attention_heads"] * hd)
        t[f"{p}.mlp.fc1.weight"] = (e["intermediate_size"], He)
        t[f"{p}.mlp.fc2.weight"] = (He, e["intermediate_size"])
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[f"{p}.{n}.weight"] = (He,)
            t[f"{p}.{n}.bias"] = (He,)
        t[f"{p}.self_attn_layer_scale.scale"] = (He,)
        t[f"{p}.mlp_layer_scale.scale"] = (He,)
    encodec_frame_rate = e["sampling_rate"] / math.prod(e["upsampling_ratios"])
    stride = round(encodec_frame_rate / e["_frame_rate"])
    t["encoder.downsample.conv.weight"] = (He, He, 2 * stride)
    vqh = e["vector_quantization_hidden_dimension"]
    for part, n in (("semantic", e["num_semantic_quantizers"]),
                    ("acoustic", e["num_quantizers"] - e["num_semantic_quantizers"])):
        p = f"encoder.quantizer.{part}_residual_vector_quantizer"
        for i in range(n):
            t[f"{p}.layers.{i}.codebook.initialized"] = (1,)
            t[f"{p}.layers.{i}.codebook.cluster_usage"] = (e["codebook_size"],)
            t[f"{p}.layers.{i}.codebook.embed_sum"] = (e["codebook_size"], e["codebook_dim"])
        if vqh != He:
            t[f"{p}.input_proj.weight"] = (vqh, He, 1)
            t[f"{p}.output_proj.weight"] = (He, vqh, 1)
    return t


def _codec_decoder_tensors(d):
    """The decoder half."""
    t = OrderedDict()
    Hd, L, hd = d["hidden_size"], d["latent_dim"], d["head_dim"]
    for i in range(d["num_hidden_layers"]):
        p = f"decoder.pre_transformer.layers.{i}"
        lt = _decoder_layer(p, Hd, d["intermediate_size"], d["num_attention_heads"], d["num_key_value_heads"], hd,
                            qk_norm=False)
        lt[f"{p}.self_attn_layer_scale.scale"] = (Hd,)
        lt[f"{p}.mlp_layer_scale.scale"] = (Hd,)
        t.update(lt)
    t["decoder.pre_transformer.norm.weight"] = (Hd,)
    t["decoder.pre_transformer.input_proj.weight"] = (Hd, L)
    t["decoder.pre_transformer.input_proj.bias"] = (Hd,)
    t["decoder.pre_transformer.output_proj.weight"] = (L, Hd)
    t["decoder.pre_transformer.output_proj.bias"] = (L,)
    cd, half = d["codebook_dim"], d["codebook_dim"] // 2
    for part, n in (("rvq_first", d["num_semantic_quantizers"]),
                    ("rvq_rest", d["num_quantizers"] - d["num_semantic_quantizers"])):
        p = f"decoder.quantizer.{part}"
        t[f"{p}.input_proj.weight"] = (half, cd, 1)
        t[f"{p}.output_proj.weight"] = (cd, half, 1)
        for i in range(n):
            t[f"{p}.vq.layers.{i}._codebook.cluster_usage"] = (d["codebook_size"],)
            t[f"{p}.vq.layers.{i}._codebook.embedding_sum"] = (d["codebook_size"], half)
    t["decoder.pre_conv.conv.weight"] = (L, cd, 3)
    t["decoder.pre_conv.conv.bias"] = (L,)
    for i, r in enumerate(d["upsampling_ratios"]):
        p = f"decoder.upsample.{i}"
        t[f"{p}.0.conv.weight"] = (L, L, r)                    # ConvTranspose1d: [in, out, k]
        t[f"{p}.0.conv.bias"] = (L,)
        t[f"{p}.1.gamma"] = (L,)
        t[f"{p}.1.dwconv.conv.weight"] = (L, 1, 7)
        t[f"{p}.1.dwconv.conv.bias"] = (L,)
        t[f"{p}.1.norm.weight"] = (L,)
        t[f"{p}.1.norm.bias"] = (L,)
        t[f"{p}.1.pwconv1.weight"] = (4 * L, L)
        t[f"{p}.1.pwconv1.bias"] = (4 * L,)
        t[f"{p}.1.pwconv2.weight"] = (L, 4 * L)
        t[f"{p}.1.pwconv2.bias"] = (L,)
    D = d["decoder_dim"]
    t["decoder.decoder.0.conv.weight"] = (D, L, 7)
    t["decoder.decoder.0.conv.bias"] = (D,)
    cin = D
    for b, r in enumerate(d["upsample_rates"], start=1):
        cout, p = cin // 2, f"decoder.decoder.{b}.block"
        t[f"{p}.0.alpha"] = (cin,)
        t[f"{p}.0.beta"] = (cin,)
        t[f"{p}.1.conv.weight"] = (cin, cout, 2 * r)           # ConvTranspose1d
        t[f"{p}.1.conv.bias"] = (cout,)
        for u in (2, 3, 4):                                    # residual units, dilation 1, 3, 9
            t[f"{p}.{u}.act1.alpha"] = (cout,)
            t[f"{p}.{u}.act1.beta"] = (cout,)
            t[f"{p}.{u}.conv1.conv.weight"] = (cout, cout, 7)
            t[f"{p}.{u}.conv1.conv.bias"] = (cout,)
            t[f"{p}.{u}.act2.alpha"] = (cout,)
            t[f"{p}.{u}.act2.beta"] = (cout,)
            t[f"{p}.{u}.conv2.conv.weight"] = (cout, cout, 1)
            t[f"{p}.{u}.conv2.conv.bias"] = (cout,)
        cin = cout
    n = len(d["upsample_rates"])
    t[f"decoder.decoder.{n + 1}.alpha"] = (cin,)
    t[f"decoder.decoder.{n + 1}.beta"] = (cin,)
    t[f"decoder.decoder.{n + 2}.conv.weight"] = (1, cin, 7)
    t[f"decoder.decoder.{n + 2}.conv.bias"] = (1,)
    return t


# ----------------------------------------------------------------------------------------------
# Self-check against shapes.txt and the tiny fixtures
# ----------------------------------------------------------------------------------------------
def collapse(tensors, title):
    """The listing format of shared/reference/dump_shapes.py: numeric path components -> {n}, first-seen shape,
    count, in state-dict order."""
    pats, counts = OrderedDict(), {}
    for k, shape in tensors.items():
        pat = re.sub(r"\.(\d+)\.", lambda m: ".{n}.", k)
        if pat not in pats:
            pats[pat], counts[pat] = shape, 0
        counts[pat] += 1
    n = sum(math.prod(s) for s in tensors.values())
    lines = [f"### {title}: {len(tensors)} tensors, {n / 1e6:.2f} M params", ""]
    lines += [f"{p:<95} {str(list(s)):<18} x{counts[p]}" for p, s in pats.items()]
    return lines


def parse_shapes_txt(path):
    sections, cur = {}, None
    for line in open(path, encoding="utf-8").read().splitlines():
        m = re.match(r"### (\S+): ", line)
        if m:
            cur = sections.setdefault(m.group(1), [])
        if cur is not None and line.strip():
            cur.append(line.rstrip())
    return sections


def _norm_listing(lines):
    out = []
    for line in lines:
        if line.startswith("###"):
            out.append(line)
        elif line.strip():
            name, rest = line.split(None, 1)
            shape, count = rest.rsplit(None, 1)
            out.append((name, shape.replace(" ", ""), count))
    return out


def safetensors_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        hdr = json.loads(f.read(n))
    hdr.pop("__metadata__", None)
    return {k: (tuple(v["shape"]), v["dtype"]) for k, v in hdr.items()}


def self_check(configs_dir, shapes_txt, fixtures_dir):
    problems, checked = [], []
    configs_dir = Path(configs_dir)
    if Path(shapes_txt).is_file():
        want = parse_shapes_txt(shapes_txt)
        tok_cfg = json.load(open(configs_dir / TOKENIZER_CONFIG_NAME))
        for title, tensors in (
                ("Qwen3-TTS-12Hz-0.6B-Base",
                 model_tensors(json.load(open(configs_dir / "Qwen3-TTS-12Hz-0.6B-Base.config.json")))),
                ("Qwen3-TTS-12Hz-1.7B-Base",
                 model_tensors(json.load(open(configs_dir / "Qwen3-TTS-12Hz-1.7B-Base.config.json")))),
                ("Qwen3-TTS-Tokenizer-12Hz", speech_tokenizer_tensors(tok_cfg))):
            got, exp = _norm_listing(collapse(tensors, title)), _norm_listing(want.get(title, []))
            if got != exp:
                problems.append(f"{title}: derived listing differs from {shapes_txt}")
                for a, b in zip(got + [None] * len(exp), exp + [None] * len(got)):
                    if a != b:
                        problems.append(f"   derived {a}\n   shapes.txt {b}")
                        break
            checked.append(f"{title} ({len(tensors)} tensors) vs shapes.txt")
        # CustomVoice / VoiceDesign: Base minus the speaker encoder (model.md 7)
        for size in ("0.6B", "1.7B"):
            base = model_tensors(json.load(open(configs_dir / f"Qwen3-TTS-12Hz-{size}-Base.config.json")))
            for kind in ("CustomVoice", "VoiceDesign"):
                p = configs_dir / f"Qwen3-TTS-12Hz-{size}-{kind}.config.json"
                if p.is_file():
                    t = model_tensors(json.load(open(p)))
                    if t != OrderedDict((k, v) for k, v in base.items() if not k.startswith("speaker_encoder.")):
                        problems.append(f"{size}-{kind}: not Base minus speaker_encoder")
                    checked.append(f"{size}-{kind} ({len(t)} tensors) = Base minus speaker_encoder")
    else:
        print(f"note: {shapes_txt} not found, skipping the shapes.txt comparison")
    # tiny fixtures: real reference state dicts with distinct small dims (catches swapped dims)
    for ckpt in sorted(Path(fixtures_dir).glob("tiny-*")):
        for derive, cfg_path, st_path in (
                (model_tensors, ckpt / "config.json", ckpt / "model.safetensors"),
                (speech_tokenizer_tensors, ckpt / "speech_tokenizer" / "config.json",
                 ckpt / "speech_tokenizer" / "model.safetensors")):
            if not st_path.is_file():
                continue
            got = {k: s for k, s in derive(json.load(open(cfg_path))).items()}
            exp = {k: s for k, (s, _) in safetensors_header(st_path).items()}
            if got != exp:
                diff = sorted(set(got.items()) ^ set(exp.items()))[:6]
                problems.append(f"{st_path}: derived names/shapes differ, e.g. {diff}")
            checked.append(f"{st_path.relative_to(fixtures_dir)} ({len(exp)} tensors)")
    for c in checked:
        print("checked:", c)
    if problems:
        print("SELF-CHECK FAILED:\n" + "\n".join(problems))
        return 1
    print(f"self-check OK ({len(checked)} comparisons)")
    return 0


# ----------------------------------------------------------------------------------------------
# Random values and the safetensors writer
# ----------------------------------------------------------------------------------------------
def f32_to_bf16_bits(x):
    """Round float32 -> bfloat16 (round to nearest, ties to even) with integer ops; returns uint16 bits."""
    u = x.view(np.uint32)
    u = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))  # no NaN/Inf in these tensors
    return (u >> np.uint32(16)).astype(np.uint16)


def init_kind(name, shape, tokenizer):
    """-> (kind, a, b): values are a*N(0,1)+b ('normal'), U(a, b) ('uniform') or the constant a ('const')."""
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("initialized"):
        return "const", 1.0, 0.0
    if name.endswith("cluster_usage"):
        return "uniform", 0.5, 2.0
    if name.endswith(("embedding_sum", "embed_sum")):
        return "normal", shape[-1] ** -0.5, 0.0
    if leaf in ("alpha", "beta"):
        return "normal", 0.3, 0.0
    if leaf in ("scale", "gamma"):
        return "uniform", 0.1, 0.5
    if "norm" in name and leaf == "weight":
        return "normal", 0.1, 1.0
    if leaf == "bias":
        return "normal", 0.02, 0.0
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return "normal", (0.5 if tokenizer else 1.0) * fan_in ** -0.5, 0.0


CHUNK = 1 << 24   # elements per generation chunk (64 MiB of float32)


def write_safetensors(path, tensors, dtype, rng, tokenizer, bar):
    """Stream a safetensors file: u64 LE header length, JSON header (space-padded to 8 bytes), raw data."""
    st_dtype, itemsize = {"bf16": ("BF16", 2), "f32": ("F32", 4)}[dtype]
    header, off = OrderedDict(), 0
    header["__metadata__"] = {"format": "pt"}
    for name, shape in tensors.items():
        n = math.prod(shape) * itemsize
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)
    buf = np.empty(CHUNK, dtype=np.float32)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for name, shape in tensors.items():
            kind, a, b = init_kind(name, shape, tokenizer)
            left = math.prod(shape)
            while left:
                n = min(left, CHUNK)
                x = buf[:n]
                if kind == "normal":
                    rng.standard_normal(out=x, dtype=np.float32)
                    x *= np.float32(a)
                    if b:
                        x += np.float32(b)
                elif kind == "uniform":
                    rng.random(out=x, dtype=np.float32)
                    x *= np.float32(b - a)
                    x += np.float32(a)
                else:
                    x.fill(a)
                f.write((f32_to_bf16_bits(x) if dtype == "bf16" else x).tobytes())
                left -= n
                if bar is not None:
                    bar.update(n * itemsize)
    return off + 8 + len(hjson)


def build(config_path, out, seed):
    config_path = Path(config_path)
    cfg = json.load(open(config_path))
    gen_path = config_path.parent / "generation_config.json"
    tok_path = config_path.parent / TOKENIZER_CONFIG_NAME
    tok_cfg = json.load(open(tok_path))
    gen_cfg = json.load(open(gen_path))
    out = Path(out)
    os.makedirs(out / "speech_tokenizer", exist_ok=True)
    mt, tt = model_tensors(cfg), speech_tokenizer_tensors(tok_cfg)
    total = sum(math.prod(s) for s in mt.values()) * 2 + sum(math.prod(s) for s in tt.values()) * 4
    print(f"{config_path.name}: {len(mt)} tensors / {sum(math.prod(s) for s in mt.values()) / 1e6:.2f} M params "
          f"(bf16) + speech tokenizer {len(tt)} tensors / {sum(math.prod(s) for s in tt.values()) / 1e6:.2f} M "
          f"(fp32) -> {total / 2**30:.2f} GiB")
    rng = np.random.default_rng(seed)
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024) if tqdm else None
    write_safetensors(out / "model.safetensors", mt, "bf16", rng, False, bar)
    write_safetensors(out / "speech_tokenizer" / "model.safetensors", tt, "f32", rng, True, bar)
    if bar is not None:
        bar.close()
    for name, obj in (("config.json", cfg), ("generation_config.json", gen_cfg),
                      ("speech_tokenizer/config.json", tok_cfg),
                      ("speech_tokenizer/preprocessor_config.json", PREPROCESSOR_CONFIG)):
        with open(out / name, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    for name in TEXT_TOKENIZER_FILES:
        shutil.copyfile(TEXT_TOKENIZER_DIR / name, out / name)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="a released-style config.json (generation_config.json and "
                                     f"{TOKENIZER_CONFIG_NAME} must lie beside it)")
    ap.add_argument("-o", "--out", help="output checkpoint directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--self-check", action="store_true",
                    help="compare the derived tensor lists with shapes.txt and the tiny fixtures, then exit")
    ap.add_argument("--configs-dir", default=str(SHARED_REF / "configs"))
    ap.add_argument("--shapes", default=str(SHARED_REF / "shapes.txt"))
    ap.add_argument("--fixtures", default=str(REPO / "tests" / "fixtures"))
    args = ap.parse_args(argv)
    if args.self_check:
        return self_check(args.configs_dir, args.shapes, args.fixtures)
    if not args.config or not args.out:
        ap.error("--config and -o are required (or use --self-check)")
    t0 = time.time()
    build(args.config, args.out, args.seed)
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    print(f"wrote {args.out}: {size / 2**30:.2f} GiB in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
