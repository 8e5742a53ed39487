#!/usr/bin/env python3
"""Generate (or check) the project's tiny Qwen3-TTS parity fixtures.

Two tiny, structurally complete checkpoints with random weights, in the released Hugging Face layout (minus the
parts they share), plus reference oracles produced by the official ``qwen-tts`` 0.1.1 code on CPU (float32, greedy,
eager attention):

  tests/fixtures/tiny-17/   "1.7B-style": talker hidden 64 (FFN 128, 4/2 heads, head_dim 16), code predictor
                            hidden 32 (FFN 64, 4/2 heads, head_dim 8), so
                            ``talker.code_predictor.small_to_mtp_projection`` exists; model.safetensors in bf16
  tests/fixtures/tiny-06/   "0.6B-style": code predictor hidden == talker hidden == 32 (both FFN 64, 4/2 heads,
                            head_dim 8), so the projection is nn.Identity (no tensor); model.safetensors in fp16;
                            different seed
  tests/fixtures/speech-tokenizer/{config.json,preprocessor_config.json,model.safetensors}
                            the one speech tokenizer (12 Hz codec, fp32 as released, own seed) shared by both
                            checkpoints, as the released models all ship the same ``speech_tokenizer/``; plus
                            oracle.safetensors, the codec oracle (``dec.*``, see below).

Both checkpoints use text_hidden_size 8 (keeps the 151936-row text embedding small). Each checkpoint dir holds
config.json, generation_config.json, model.safetensors and oracle.safetensors. Neither holds ``speech_tokenizer/``
nor the Qwen2 text-tokenizer files (vocab.json, merges.txt, tokenizer_config.json): tests (tests/conftest.py)
assemble a full checkpoint dir by linking the shared speech tokenizer in as ``speech_tokenizer/`` and adding the
text-tokenizer files from the team's shared directory ``shared/reference/qwen2-tokenizer/`` (beside the repo). The
reference runs below use the same assembly.

Model oracle (``<ckpt>/oracle.safetensors``, docs/model-spec.md section 8.2 without the ``dec.*`` entries, plus two
extra modes, see ``modes()``): ``ref_wav``, ``spk.mel``, ``spk.embedding``, ``ref_code``, ``ids.*`` and per mode
``prompt_embeds``, ``step_inputs``, ``talker_logits``, ``cp_prefill_in``, ``cp_logits``, ``codes``,
``talker_hidden``. To save space ``<mode>.cp_logits`` keeps only the first frame in every mode: 15 rows
(heads 1..15) x 2048, not frames x 15 (the codes of every frame are kept and compared). (The greedy-margin summary
printed by the generator still covers all frames.)

Codec oracle (``speech-tokenizer/oracle.safetensors``): ``dec.codes`` (the codes of all tiny-17 modes concatenated,
in mode order), ``dec.quantized``, ``dec.pre_conv``, ``dec.pre_transformer``, ``dec.wav_forward``,
``dec.wav_decode`` (official decode, chunked 300/25) and ``dec.wav_chunked_5_3``.

Weights are drawn with numpy's PCG64 generator (bit-identical on every platform; torch.randn is not: its
AVX2 and scalar kernels give different values), with the distributions of the team recipe's ``randomize_``
(shared/reference/tiny_parity.py), then rounded to the storage dtype (bf16 / fp16; the speech tokenizer is
fp16-rounded but stored as fp32). The reference then runs on the weights loaded back from the files as
float32, so the oracle matches the stored weights exactly.

Usage:
  python tests/reference/make_fixtures.py             # (re)write tests/fixtures/{tiny-17,tiny-06,speech-tokenizer}
  python tests/reference/make_fixtures.py --out DIR   # write somewhere else
  python tests/reference/make_fixtures.py --check     # regenerate into a temp dir and compare with --out
  python tests/reference/make_fixtures.py --check --regenerated DIR   # compare DIR (written by this script) instead
"""
import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "fixtures"
sys.path.insert(0, str(HERE))
import stubs  # noqa: E402,F401  (must precede qwen_tts: stubs sox / onnxruntime / torchaudio)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import transformers  # noqa: E402

with contextlib.redirect_stdout(io.StringIO()):   # qwen_tts prints a flash-attn banner at import
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration  # noqa: E402
    from qwen_tts.core.models.modeling_qwen3_tts import mel_spectrogram  # noqa: E402
    from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model  # noqa: E402

transformers.logging.set_verbosity_error()   # "Setting pad_token_id ..." / invalid-flag noise in greedy mode
THREADS = 2
torch.set_num_threads(THREADS)

# Float results of torch depend slightly on the thread count and on the CPU kernels picked at run time
# (AVX2 / AVX512 / scalar; Intel vs AMD): 4.9e-6 was measured between 1 and 2 threads, and a regeneration on an
# AMD EPYC (Zen 4) moved one element of the 6.5-magnitude mel spectrogram by 1.43e-5 (about 30 float32 ULPs
# there). Rounding noise scales with the magnitude of the values, so --check compares oracle floats element by
# element with |committed - regenerated| <= FLOAT_ATOL + FLOAT_RTOL * |committed| (numpy.isclose's rule): 1e-5
# absolute near zero, plus 1e-5 relative (about 80 ULPs) for larger values. A real change of the oracle (other
# weights, inputs or reference code) moves values by 1e-3 or more. Codes, ids and weights are compared exactly.
FLOAT_ATOL = 1e-5
FLOAT_RTOL = 1e-5
VERBOSE = True   # per-mode summaries; off in --check, which prints one line (or the drift report)


def log(*a):
    if VERBOSE:
        print(*a, flush=True)

# ----------------------------------------------------------------------------------------------
# Configurations (ids and codebook sizes real; dims tiny)
# ----------------------------------------------------------------------------------------------
LANG = {"chinese": 2055, "english": 2050, "german": 2053, "italian": 2070, "portuguese": 2071,
        "spanish": 2054, "japanese": 2058, "korean": 2064, "french": 2061, "russian": 2069,
        "beijing_dialect": 2074, "sichuan_dialect": 2062}
TEXT_HIDDEN = 8   # keeps the 151936-row text embedding small


def model_config(talker, cp):
    """talker / cp: (hidden, ffn, heads, kv_heads, head_dim) of the talker and of the code predictor."""
    hidden, ffn, heads, kv_heads, head_dim = talker
    cp_hidden, cp_ffn, cp_heads, cp_kv_heads, cp_head_dim = cp
    half = head_dim // 2   # the M-RoPE sections split the head_dim/2 frequencies ([4, 2, 2] for head_dim 16)
    return {
        "architectures": ["Qwen3TTSForConditionalGeneration"], "model_type": "qwen3_tts",
        "tokenizer_type": "qwen3_tts_tokenizer_12hz", "tts_model_size": "tiny", "tts_model_type": "base",
        "im_start_token_id": 151644, "im_end_token_id": 151645, "assistant_token_id": 77091,
        "tts_pad_token_id": 151671, "tts_bos_token_id": 151672, "tts_eos_token_id": 151673,
        "speaker_encoder_config": {
            "mel_dim": 128,  # must stay 128: extract_speaker_embedding hard-codes num_mels=128
            "enc_dim": hidden,   # must equal the talker hidden size (the x-vector is a codec-track row)
            "enc_channels": [32, 32, 32, 32, 96], "enc_kernel_sizes": [5, 3, 3, 3, 1],
            "enc_dilations": [1, 2, 3, 4, 1], "enc_attention_channels": 16, "enc_res2net_scale": 4,
            "enc_se_channels": 8, "sample_rate": 24000},
        "talker_config": {
            "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": 2, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "head_dim": head_dim, "hidden_act": "silu",
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
            "rope_scaling": {"interleaved": True, "mrope_section": [half // 2, half // 4, half // 4],
                             "rope_type": "default",
                             "type": "default"},
            "attention_bias": False, "use_sliding_window": False, "sliding_window": None,
            "tie_word_embeddings": False,
            "vocab_size": 3072, "text_vocab_size": 151936, "text_hidden_size": TEXT_HIDDEN, "num_code_groups": 16,
            "position_id_per_seconds": 13,
            "codec_pad_id": 2148, "codec_bos_id": 2149, "codec_eos_token_id": 2150, "codec_think_id": 2154,
            "codec_nothink_id": 2155, "codec_think_bos_id": 2156, "codec_think_eos_id": 2157,
            "codec_language_id": dict(LANG),
            "spk_id": {"vivian": 3065, "dylan": 2878},
            "spk_is_dialect": {"vivian": False, "dylan": "beijing_dialect"},
            "code_predictor_config": {
                "hidden_size": cp_hidden, "intermediate_size": cp_ffn, "num_hidden_layers": 2,
                "num_attention_heads": cp_heads, "num_key_value_heads": cp_kv_heads, "head_dim": cp_head_dim,
                "hidden_act": "silu",
                "max_position_embeddings": 65536, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
                "rope_scaling": None, "attention_bias": False, "use_sliding_window": False, "sliding_window": None,
                "vocab_size": 2048, "num_code_groups": 16, "tie_word_embeddings": False},
        },
    }


SPEECH_TOKENIZER_CONFIG = {
    "architectures": ["Qwen3TTSTokenizerV2Model"], "model_type": "qwen3_tts_tokenizer_12hz",
    "encoder_valid_num_quantizers": 16, "input_sample_rate": 24000, "output_sample_rate": 24000,
    "decode_upsample_rate": 1920, "encode_downsample_rate": 1920,
    "encoder_config": {
        "_frame_rate": 12.5, "audio_channels": 1, "sampling_rate": 24000, "num_filters": 4, "kernel_size": 7,
        "residual_kernel_size": 3, "last_kernel_size": 3, "num_residual_layers": 1, "dilation_growth_rate": 2,
        "compress": 2, "upsampling_ratios": [8, 6, 5, 4], "use_causal_conv": True, "pad_mode": "constant",
        "trim_right_ratio": 1.0, "use_conv_shortcut": False, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 64,
        "hidden_act": "gelu", "norm_eps": 1e-5, "layer_scale_initial_scale": 0.01, "rope_theta": 10000.0,
        "max_position_embeddings": 8000, "sliding_window": 250, "num_quantizers": 16,
        "num_semantic_quantizers": 1, "codebook_size": 2048, "codebook_dim": 16,
        "vector_quantization_hidden_dimension": 16, "upsample_groups": 32, "use_cache": False,
        "use_streaming": False, "attention_bias": False},
    "decoder_config": {
        "latent_dim": 32, "codebook_dim": 16, "codebook_size": 2048, "semantic_codebook_size": 4096,
        "decoder_dim": 64, "hidden_size": 32, "intermediate_size": 64, "hidden_act": "silu",
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
        "rms_norm_eps": 1e-5, "layer_scale_initial_scale": 0.01, "rope_theta": 10000,
        "max_position_embeddings": 8000, "sliding_window": 4, "num_quantizers": 16,
        "num_semantic_quantizers": 1, "upsample_rates": [8, 5, 4, 3], "upsampling_ratios": [2, 2],
        "vector_quantization_hidden_dimension": 16, "attention_bias": False, "attention_dropout": 0.0},
}
PREPROCESSOR_CONFIG = {"feature_extractor_type": "EncodecFeatureExtractor", "feature_size": 1, "sampling_rate": 24000,
                       "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True,
                       "chunk_length_s": None, "overlap": None}
GENERATION_CONFIG = {"do_sample": True, "repetition_penalty": 1.05, "temperature": 0.9, "top_p": 1.0, "top_k": 50,
                     "subtalker_dosample": True, "subtalker_temperature": 0.9, "subtalker_top_p": 1.0,
                     "subtalker_top_k": 50, "max_new_tokens": 8192}

FIXTURES = {
    # name: seed, storage dtype of model.safetensors, talker and code predictor
    # (hidden, ffn, heads, kv_heads, head_dim)
    "tiny-17": dict(seed=1234, dtype=torch.bfloat16, talker=(64, 128, 4, 2, 16), cp=(32, 64, 4, 2, 8)),
    "tiny-06": dict(seed=6060, dtype=torch.float16, talker=(32, 64, 4, 2, 8), cp=(32, 64, 4, 2, 8)),
}
# The shared speech tokenizer: its own dir (no ``speech_tokenizer/`` inside the checkpoint dirs), its own seed.
SPEECH_TOKENIZER_DIR = "speech-tokenizer"
SPEECH_TOKENIZER_SEED = 1212
SPEECH_TOKENIZER_FILES = ("config.json", "preprocessor_config.json", "model.safetensors")
SPEECH_TOKENIZER_STORAGE = torch.float16   # fp16 in the file to keep the fixtures small (values are fp16-rounded either way); the full-size test covers the released fp32 codec layout
CODEC_ORACLE_FROM = "tiny-17"   # the codec oracle decodes the codes of this checkpoint's runs
CP_LOGITS_FRAMES = 1            # <mode>.cp_logits keeps the first frame (15 rows) only; codes are compared for every frame

# ----------------------------------------------------------------------------------------------
# Prompts (token ids as the Qwen2 tokenizer produces them for the chat templates; text ids hand-picked)
# ----------------------------------------------------------------------------------------------
TEXT_TOKENS = [9707, 11, 1879, 0, 358, 1079]
REF_TOKENS = [785, 3974, 13876, 13]
# "<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n"
INPUT_IDS = [151644, 77091, 198] + TEXT_TOKENS + [151645, 198, 151644, 77091, 198]
# "<|im_start|>assistant\n{ref}<|im_end|>\n"
REF_IDS = [151644, 77091, 198] + REF_TOKENS + [151645, 198]
# "<|im_start|>user\n{instruct}<|im_end|>\n"
INSTRUCT_IDS = [151644, 872, 198, 40, 1079, 264, 151645, 198]

GREEDY = dict(do_sample=False, subtalker_dosample=False, repetition_penalty=1.05, max_new_tokens=6,  # -> 5 frames
              top_k=50, top_p=1.0, temperature=0.9, subtalker_top_k=50, subtalker_top_p=1.0,
              subtalker_temperature=0.9)


def modes(input_ids, ref_ids, instruct_ids, spk, ref_code):
    """name -> kwargs for Qwen3TTSForConditionalGeneration.generate (order = order in dec.codes)."""
    def clone(icl):
        return dict(ref_code=[ref_code if icl else None], ref_spk_embedding=[spk],
                    x_vector_only_mode=[not icl], icl_mode=[icl])
    return {
        "custom_voice": dict(input_ids=[input_ids], instruct_ids=[None], languages=["english"],
                             speakers=["vivian"], non_streaming_mode=True),
        "custom_voice_dialect_instruct": dict(input_ids=[input_ids], instruct_ids=[instruct_ids],
                                              languages=["auto"], speakers=["dylan"], non_streaming_mode=True),
        "voice_design_streaming_text": dict(input_ids=[input_ids], instruct_ids=[instruct_ids],
                                            languages=["auto"], non_streaming_mode=False),
        "xvector_clone": dict(input_ids=[input_ids], ref_ids=[None], languages=["english"],
                              non_streaming_mode=False, voice_clone_prompt=clone(False)),
        "icl_clone": dict(input_ids=[input_ids], ref_ids=[ref_ids], languages=["english"],
                          non_streaming_mode=False, voice_clone_prompt=clone(True)),
        # extra modes: the other text mode for CustomVoice and for ICL
        "custom_voice_streaming_text": dict(input_ids=[input_ids], instruct_ids=[None], languages=["english"],
                                            speakers=["vivian"], non_streaming_mode=False),
        "icl_clone_non_streaming": dict(input_ids=[input_ids], ref_ids=[ref_ids], languages=["english"],
                                        non_streaming_mode=True, voice_clone_prompt=clone(True)),
    }


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------
def randomize_(module, rng, w_scale=1.0):
    """Non-degenerate random values for every parameter and float buffer (the recipe's rules; the default HF
    init gives zero codebooks and zero Snake parameters). Draws from a numpy Generator, in module order."""
    def normal(shape):
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32))

    def uniform(shape):
        return torch.from_numpy(rng.random(tuple(shape), dtype=np.float32))

    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith("cluster_usage"):
                p.copy_(uniform(p.shape) * 1.5 + 0.5)                                   # > 0
            elif name.endswith("embedding_sum"):
                p.copy_(normal(p.shape) * p.shape[-1] ** -0.5)
            elif leaf in ("alpha", "beta"):                                             # SnakeBeta (log-scale)
                p.copy_(normal(p.shape) * 0.3)
            elif leaf in ("scale", "gamma"):                                            # LayerScale / ConvNeXt
                p.copy_(uniform(p.shape) * 0.4 + 0.1)
            elif "norm" in name and leaf == "weight":                                   # RMSNorm / LayerNorm
                p.copy_(1.0 + 0.1 * normal(p.shape))
            elif leaf == "bias":
                p.copy_(0.02 * normal(p.shape))
            else:                                                                       # Linear/Conv/Embedding
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(normal(p.shape) * (w_scale * fan_in ** -0.5))
        for name, b in module.named_buffers():
            if name.endswith("embed_sum"):          # Mimi encoder codebooks (persistent buffers)
                b.copy_(normal(b.shape) * b.shape[-1] ** -0.5)
            elif name.endswith("cluster_usage"):
                b.copy_(uniform(b.shape) * 1.5 + 0.5)


def rounded_state_dict(module, dtype):
    """Round every float tensor of the state dict to `dtype` in place (module keeps fp32 storage)."""
    sd = module.state_dict()
    with torch.no_grad():
        for v in sd.values():
            if v.is_floating_point():
                v.copy_(v.to(dtype).to(v.dtype))
    return sd


def write_json(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def build_checkpoint(ckpt, spec):
    os.makedirs(ckpt)
    rng = np.random.Generator(np.random.PCG64(spec["seed"]))
    cfg = model_config(spec["talker"], spec["cp"])
    model = Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**cfg)).float().eval()
    randomize_(model, rng)
    sd = rounded_state_dict(model, spec["dtype"])
    save_file({k: v.to(spec["dtype"]).contiguous() for k, v in sd.items()}, str(ckpt / "model.safetensors"),
              metadata={"format": "pt"})
    # save_pretrained's config.json cannot be re-read (Qwen3TTSSpeakerEncoderConfig takes no **kwargs and
    # to_dict() adds keys): write the config by hand, like the released files.
    write_json(cfg, ckpt / "config.json")
    write_json(GENERATION_CONFIG, ckpt / "generation_config.json")   # read as a plain dict by the reference
    return cfg


def build_speech_tokenizer(st_dir):
    os.makedirs(st_dir)
    rng = np.random.Generator(np.random.PCG64(SPEECH_TOKENIZER_SEED))
    tok = Qwen3TTSTokenizerV2Model(Qwen3TTSTokenizerV2Config(**SPEECH_TOKENIZER_CONFIG)).float().eval()
    randomize_(tok, rng, w_scale=0.5)   # x0.5 keeps the random vocoder from amplifying fp32 rounding (model.md 8)
    sd = rounded_state_dict(tok, torch.float16)
    save_file({k: v.to(SPEECH_TOKENIZER_STORAGE).contiguous() for k, v in sd.items()},
              str(st_dir / "model.safetensors"), metadata={"format": "pt"})
    write_json(SPEECH_TOKENIZER_CONFIG, st_dir / "config.json")
    write_json(PREPROCESSOR_CONFIG, st_dir / "preprocessor_config.json")


def assemble(ckpt, st_dir, dest):
    """A loadable checkpoint dir at `dest`: links to the files of `ckpt` plus speech_tokenizer/ with links to the
    shared speech tokenizer's files (the same layout tests/conftest.py builds)."""
    os.makedirs(dest / "speech_tokenizer")
    for p in sorted(Path(ckpt).iterdir()):
        (dest / p.name).symlink_to(p.resolve())
    for f in SPEECH_TOKENIZER_FILES:
        (dest / "speech_tokenizer" / f).symlink_to((Path(st_dir) / f).resolve())
    return dest


# ----------------------------------------------------------------------------------------------
# Reference run
# ----------------------------------------------------------------------------------------------
def _meta():
    return {"generator": "tests/reference/make_fixtures.py", "torch": torch.__version__,
            "transformers": transformers.__version__, "qwen_tts": _qwen_tts_version(), "threads": str(THREADS),
            "attn_implementation": "eager", "float_tolerance": str(FLOAT_ATOL)}


def make_oracle(ckpt, st_dir, name):
    """Runs the reference on checkpoint `ckpt` (with the speech tokenizer of `st_dir`), writes
    <ckpt>/oracle.safetensors and returns (speech tokenizer wrapper, codes of all modes concatenated)."""
    with tempfile.TemporaryDirectory(prefix="qwen3tts-ckpt-") as tmp:
        return _make_oracle(assemble(ckpt, st_dir, Path(tmp) / name), ckpt, st_dir, name)


def _make_oracle(assembled, ckpt, st_dir, name):
    model = Qwen3TTSForConditionalGeneration.from_pretrained(str(assembled), dtype=torch.float32,
                                                             attn_implementation="eager").eval()
    stok = model.speech_tokenizer
    # the reference must run on exactly the stored (rounded) values
    for path, mod in ((ckpt / "model.safetensors", model),
                      (Path(st_dir) / "model.safetensors", stok.model)):
        stored, live = load_file(str(path)), mod.state_dict()
        assert set(stored) == set(live), f"{path}: key sets differ"
        bad = [k for k, v in stored.items() if not torch.equal(live[k], v.float())]
        assert not bad, f"{path}: loaded values differ from the file: {bad[:5]}"

    oracle = {}
    sr = 24000
    t = np.arange(int(1.3 * sr)) / sr
    ref_wav = (0.3 * np.sin(2 * np.pi * (150 + 200 * t) * t)
               + 0.05 * np.random.RandomState(7).randn(t.size)).astype(np.float32)
    oracle["ref_wav"] = torch.from_numpy(ref_wav)
    mel = mel_spectrogram(torch.from_numpy(ref_wav).unsqueeze(0), n_fft=1024, num_mels=128, sampling_rate=24000,
                          hop_size=256, win_size=1024, fmin=0, fmax=12000).transpose(1, 2)
    oracle["spk.mel"] = mel[0].contiguous()                                 # (frames, 128)
    spk = model.extract_speaker_embedding(ref_wav, 24000)                    # (enc_dim,)
    oracle["spk.embedding"] = spk.clone()
    ref_code = stok.encode(ref_wav, sr=24000).audio_codes[0]                 # (T, 16) Mimi encoder codes
    oracle["ref_code"] = ref_code.clone()

    cap = {"talker_in": [], "talker_logits": [], "cp_in": [], "cp_logits": []}
    hooks = [
        model.talker.model.register_forward_hook(
            lambda m, a, kw, out: cap["talker_in"].append(kw["inputs_embeds"].detach().clone()), with_kwargs=True),
        model.talker.codec_head.register_forward_hook(
            lambda m, a, out: cap["talker_logits"].append(out[:, -1].detach().clone())),
        model.talker.code_predictor.model.register_forward_hook(      # input after small_to_mtp_projection
            lambda m, a, kw, out: cap["cp_in"].append(kw["inputs_embeds"].detach().clone()), with_kwargs=True),
    ] + [head.register_forward_hook(lambda m, a, out: cap["cp_logits"].append(out[:, -1].detach().clone()))
         for head in model.talker.code_predictor.lm_head]

    input_ids, ref_ids, instruct_ids = (torch.tensor([x]) for x in (INPUT_IDS, REF_IDS, INSTRUCT_IDS))
    oracle["ids.input"], oracle["ids.ref"], oracle["ids.instruct"] = input_ids, ref_ids, instruct_ids
    log(f"[{name}] ref_code {tuple(ref_code.shape)}  mel {tuple(mel[0].shape)}  spk {tuple(spk.shape)}")

    all_codes = []
    for mode, kw in modes(input_ids, ref_ids, instruct_ids, spk, ref_code).items():
        for v in cap.values():
            v.clear()
        torch.manual_seed(0)   # greedy: unused, but keeps any sampling path deterministic
        codes_list, hid_list = model.generate(**kw, **GREEDY)
        codes = codes_list[0]
        all_codes.append(codes)
        oracle[f"{mode}.prompt_embeds"] = cap["talker_in"][0][0].contiguous()                      # (L, D)
        oracle[f"{mode}.step_inputs"] = torch.cat([x[0] for x in cap["talker_in"][1:]], 0)        # (steps-1, D)
        oracle[f"{mode}.talker_logits"] = torch.cat(cap["talker_logits"], 0)                      # (steps, 3072)
        oracle[f"{mode}.cp_prefill_in"] = cap["cp_in"][0][0].contiguous()                         # (2, cp_hidden)
        oracle[f"{mode}.cp_logits"] = torch.stack(cap["cp_logits"], 0)[:, 0].contiguous()         # (frames*15, 2048)
        oracle[f"{mode}.codes"] = codes.clone()                                                    # (frames, 16)
        oracle[f"{mode}.talker_hidden"] = hid_list[0].clone()                                      # (frames, D)
        log(f"[{name}] {mode:30s} prompt_len={cap['talker_in'][0].shape[1]:3d} frames={codes.shape[0]} "
              f"c0={codes[:, 0].tolist()}")
    for h in hooks:
        h.remove()
    log(f"[{name}] smallest greedy top-1/top-2 logit gap: talker %.2e, code predictor %.2e "
          f"(how far float drift may go before a code flips)" % greedy_margins(oracle))
    for k in [k for k in oracle if k.endswith(".cp_logits")]:   # size: keep the first CP_LOGITS_FRAMES frames
        oracle[k] = oracle[k][:CP_LOGITS_FRAMES * 15].contiguous()
    save_file({k: v.contiguous() for k, v in oracle.items()}, str(ckpt / "oracle.safetensors"), metadata=_meta())
    return stok, torch.cat(all_codes, 0)


def make_codec_oracle(stok, long_codes, st_dir, codes_from):
    """Codec (decoder) oracle: decodes `long_codes` (longer than the sliding window (4) and the small chunk (5))
    with the speech tokenizer wrapper `stok` loaded from `st_dir`; writes <st_dir>/oracle.safetensors."""
    oracle = {}
    wavs, fs = stok.decode([{"audio_codes": long_codes}])   # official path: chunked_decode(300, 25)
    dec = stok.model.decoder
    with torch.no_grad():
        c = long_codes.T.unsqueeze(0)                               # (1, 16, T)
        q = dec.quantizer.decode(c)                                 # (1, codebook_dim, T)
        pre = dec.pre_conv(q).transpose(1, 2)
        tf = dec.pre_transformer(inputs_embeds=pre).last_hidden_state
        wav_full = dec(c)[0, 0]
        wav_chunk_small = dec.chunked_decode(c, chunk_size=5, left_context_size=3)[0, 0]
    oracle["dec.codes"] = long_codes.clone()
    oracle["dec.quantized"] = q[0].contiguous()
    oracle["dec.pre_conv"] = pre[0].contiguous()
    oracle["dec.pre_transformer"] = tf[0].contiguous()
    oracle["dec.wav_forward"] = wav_full.contiguous()
    oracle["dec.wav_decode"] = torch.from_numpy(wavs[0]).contiguous()
    oracle["dec.wav_chunked_5_3"] = wav_chunk_small.contiguous()
    log(f"[{SPEECH_TOKENIZER_DIR}] decode ({codes_from} codes): frames={long_codes.shape[0]} "
          f"samples={wavs[0].shape[0]} fs={fs} "
          f"max|forward-decode|={(wav_full - oracle['dec.wav_decode']).abs().max().item():.3g} "
          f"max|forward-chunked(5,3)|={(wav_full - wav_chunk_small).abs().max().item():.3g}")

    meta = dict(_meta(), codes_from=f"{codes_from}: the codes of all modes concatenated, in mode order")
    save_file({k: v.contiguous() for k, v in oracle.items()}, str(Path(st_dir) / "oracle.safetensors"),
              metadata=meta)


def greedy_margins(oracle):
    """Smallest gap between the chosen and the runner-up logit over all greedy decisions in the oracle.
    Talker logits get the reference's processing first (repetition penalty 1.05 on earlier code0s, 2048..3071
    suppressed except EOS 2150, EOS masked for the first 2 steps); code-predictor logits are used raw."""
    tm = cm = float("inf")
    for key in [k for k in oracle if k.endswith(".talker_logits")]:
        mode = key.rsplit(".", 1)[0]
        logits, codes = oracle[key], oracle[mode + ".codes"]
        seen = set()
        for s in range(codes.shape[0]):
            lg = logits[s].clone()
            for c in seen:
                lg[c] = lg[c] / GREEDY["repetition_penalty"] if lg[c] > 0 else lg[c] * GREEDY["repetition_penalty"]
            lg[2048:] = -float("inf")
            if s >= 2:
                lg[2150] = logits[s][2150]          # EOS allowed from step 2 on (never a penalised code)
            top = lg.topk(2).values
            tm = min(tm, (top[0] - top[1]).item())
            seen.add(int(codes[s, 0]))
        top = oracle[mode + ".cp_logits"].topk(2, dim=1).values
        cm = min(cm, (top[:, 0] - top[:, 1]).min().item())
    return tm, cm


def _qwen_tts_version():
    try:
        from importlib.metadata import version
        return version("qwen-tts")
    except Exception:   # pragma: no cover
        return "unknown"


def generate(out):
    out = Path(out)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    st_dir = out / SPEECH_TOKENIZER_DIR
    if st_dir.exists():
        shutil.rmtree(st_dir)
    build_speech_tokenizer(st_dir)
    for name, spec in FIXTURES.items():
        ckpt = out / name
        if ckpt.exists():
            shutil.rmtree(ckpt)
        build_checkpoint(ckpt, spec)
        stok, long_codes = make_oracle(ckpt, st_dir, name)
        if name == CODEC_ORACLE_FROM:
            make_codec_oracle(stok, long_codes, st_dir, name)
        log(f"[{name}] written to {ckpt} in {time.time() - t0:.1f}s")
        t0 = time.time()


# ----------------------------------------------------------------------------------------------
# --check
# ----------------------------------------------------------------------------------------------
def _files(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file()) if Path(root).is_dir() else []


def _load(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _json_diff(a, b, path="$"):
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in (_json_diff(a[k], b[k], f"{path}.{k}") if k in a and k in b else
                          [f"{path}.{k}: {'only in committed' if k in a else 'only in regenerated'}"])]
    if a != b or type(a) is not type(b):
        return [f"{path}: committed {json.dumps(a)[:80]} vs regenerated {json.dumps(b)[:80]}"]
    return []


def _raw(t):
    return t.contiguous().reshape(-1).view(torch.uint8)


def compare_weights(ref_path, new_path, rel, problems):
    ref, new = _load(ref_path), _load(new_path)
    for k in sorted(set(ref) | set(new)):
        if k not in new or k not in ref:
            problems.append(f"{rel}: {k}: {'missing in regenerated' if k not in new else 'not in committed'}")
            continue
        a, b = ref[k], new[k]
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{rel}: {k}: committed {a.dtype}{list(a.shape)} vs regenerated {b.dtype}{list(b.shape)}")
        elif not torch.equal(_raw(a), _raw(b)):
            n = int((a != b).sum())
            d = (a.float() - b.float()).abs().max().item()
            problems.append(f"{rel}: {k}: {n}/{a.numel()} elements differ bitwise, max abs diff {d:.3g}")
    return len(ref)


def compare_oracle(ref_path, new_path, rel, problems, worst):
    ref, new = _load(ref_path), _load(new_path)
    for k in sorted(set(ref) | set(new)):
        if k not in new or k not in ref:
            problems.append(f"{rel}: {k}: {'missing in regenerated' if k not in new else 'not in committed'}")
            continue
        a, b = ref[k], new[k]
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{rel}: {k}: committed {a.dtype}{list(a.shape)} vs regenerated {b.dtype}{list(b.shape)}")
        elif not a.is_floating_point():
            if not torch.equal(a, b):
                idx = (a != b).nonzero()[:4].tolist()
                problems.append(f"{rel}: {k}: integer tensor differs at {int((a != b).sum())} positions, "
                                f"first {idx}: committed {[a[tuple(i)].item() for i in idx]} "
                                f"vs regenerated {[b[tuple(i)].item() for i in idx]}")
        elif a.numel():
            excess, n_bad, d = float_drift(a, b)
            if n_bad:
                problems.append(f"{rel}: {k}: {n_bad}/{a.numel()} elements outside |diff| <= {FLOAT_ATOL:g} + "
                                f"{FLOAT_RTOL:g}*|value| (max abs diff {d:.3g}, {excess:.3g}x the bound)")
            elif excess > worst[0]:
                worst[:] = [excess, f"{rel}:{k}"]
    return len(ref)


def float_drift(committed, regenerated):
    """(worst |diff| / bound, elements over the bound, max |diff|) of two float tensors; NaN counts as over."""
    a, b = committed.double(), regenerated.double()
    diff = (a - b).abs()
    ratio = diff / (FLOAT_ATOL + FLOAT_RTOL * a.abs())
    over = ~(ratio <= 1)  # NaN on either side is over
    worst = float("nan") if torch.isnan(ratio).any() else ratio.max().item()
    return worst, int(over.sum()), diff.max().item()


def check(committed, regenerated=None):
    """Compares the fixtures at `committed` with a regeneration: `regenerated` (a directory this script wrote on
    this machine, e.g. the test session's) or a fresh one in a temporary directory."""
    t0 = time.time()
    committed = Path(committed)
    problems, n_tensors, worst = [], 0, [0.0, "-"]
    with tempfile.TemporaryDirectory(prefix="qwen3tts-fixtures-") as tmp:
        if regenerated:
            tmp = str(regenerated)
        else:
            generate(tmp)
        for name in [*FIXTURES, SPEECH_TOKENIZER_DIR]:
            ref_root, new_root = committed / name, Path(tmp) / name
            ref_files, new_files = _files(ref_root), _files(new_root)
            for f in sorted(set(ref_files) ^ set(new_files)):
                why = "missing in committed" if f in new_files else "not produced by the generator"
                problems.append(f"{name}/{f}: {why}")
            for f in sorted(set(ref_files) & set(new_files)):
                rel = f"{name}/{f}"
                if f.endswith(".json"):
                    for d in _json_diff(json.load(open(ref_root / f)), json.load(open(new_root / f))):
                        problems.append(f"{rel}: {d}")
                elif f == "oracle.safetensors":
                    n_tensors += compare_oracle(ref_root / f, new_root / f, rel, problems, worst)
                elif f.endswith(".safetensors"):
                    n_tensors += compare_weights(ref_root / f, new_root / f, rel, problems)
                elif (ref_root / f).read_bytes() != (new_root / f).read_bytes():
                    problems.append(f"{rel}: bytes differ")
    dt = time.time() - t0
    if problems:
        print(f"\nFIXTURE DRIFT: {len(problems)} problem(s) comparing {committed} with a fresh regeneration:")
        for p in problems:
            print("  " + p)
        print("If the change is intended, regenerate with: python tests/reference/make_fixtures.py")
        return 1
    print(f"fixtures OK: {committed} matches regeneration ({len(FIXTURES)} checkpoints + {SPEECH_TOKENIZER_DIR}, "
          f"{n_tensors} tensors; "
          f"weights bit-identical, ints exact, worst float drift {worst[0]:.3g}x the bound at {worst[1]}; bound "
          f"{FLOAT_ATOL:g} + {FLOAT_RTOL:g}*|value|) "
          f"in {dt:.1f}s")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT),
                    help="fixture root to write (or, with --check, to compare against); default %(default)s")
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temporary directory and compare with --out; exit 1 on drift")
    ap.add_argument("--regenerated", metavar="DIR",
                    help="with --check: compare this earlier regeneration instead of making a new one")
    args = ap.parse_args(argv)
    if args.check:
        global VERBOSE
        VERBOSE = False
        return check(args.out, args.regenerated)
    t0 = time.time()
    generate(args.out)
    print(f"done in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
