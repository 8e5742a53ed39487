"""The GGUF-embedded Qwen2 tokenizer against transformers' Qwen2TokenizerFast on the same tokenizer files."""

from __future__ import annotations

import json
import shutil
import time
import unicodedata
from pathlib import Path

import gguf
import numpy as np
import pytest

from wyoming_qwen3tts import tokenizer as tk


# The real Qwen2 BPE files are not kept in the repo: the team's shared directory, beside the repo root.
TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "qwen2-tokenizer"
if not (TOKENIZER_DIR / "vocab.json").is_file():
    pytest.skip(f"Qwen2 tokenizer files not found ({TOKENIZER_DIR})", allow_module_level=True)

IM_START, IM_END, ASSISTANT, USER, NL = 151644, 151645, 77091, 872, 198

CORPUS = [
    # English
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Dr. Smith's appointment is at 3:45 p.m. on Tuesday, isn't it? I'd say we'll be there; they've agreed.",
    "IT'S LOUD AND I'M SHOUTING, YOU'LL HEAR IT.",
    # Chinese
    "今天天气很好，我们一起去公园散步吧。",
    "人工智能正在改变世界，语音合成技术也越来越自然。",
    # German
    "Über den Wolken muss die Freiheit wohl grenzenlos sein. Straße, Größe, Fußgängerübergänge!",
    # Spanish
    "¿Dónde está la estación de tren? ¡Qué día tan bonito! El niño comió piña.",
    # French
    "Ça va très bien, merci ! L'été dernier, nous sommes allés à la plage « près de Nice ».",
    # Italian
    "Perché non andiamo al cinema stasera? È già tardi, però l'università è vicina.",
    # Portuguese
    "Não sei se você já ouviu falar, mas a canção é lindíssima. Coração, ação, pão.",
    # Russian
    "Привет, как дела? Съешь же ещё этих мягких французских булок, да выпей чаю.",
    # Japanese
    "こんにちは、世界！今日はいい天気ですね。カタカナとひらがなと漢字を混ぜます。",
    # Korean
    "안녕하세요, 만나서 반갑습니다. 오늘 날씨가 정말 좋네요!",
    # Digits and numbers
    "1234567890 3.14159 -42 +7 1,000,000 2024-06-01 12:30:45 0x1F 1e-9 ５６７",
    "Call 555-0123 or 800.555.0199 now; the total is $1,234.56 (€999,99) and 99.9% done.",
    "31415926535897932384626433832795028841971693993751058209749445923078164062862089986280348253421170679",
    # Emoji: plain, skin tone, ZWJ sequences, flags, keycaps, variation selectors
    "I love pizza 🍕 and 😀😃😄!",
    "Family: 👨‍👩‍👧‍👦, couple: 👩‍❤️‍👨, thumbs 👍🏽, technologist 🧑🏿‍💻.",
    "Flags 🇺🇸🇨🇳🇩🇪🇯🇵🇰🇷 and 🏳️‍🌈 and 🏴‍☠️, keycap 1️⃣ #️⃣, heart ❤️ ♥",
    # Mixed case: where the plain Qwen2 regex and the patched "Mistral" regex differ
    "HelloWorld iPhone McDonald's",
    "camelCaseVariable PascalCase iOS macOS eBay YouTube JavaScript XMLHttpRequest O'Neill",
    # Punctuation
    "Wait... what?! (Really) [yes] {no} <maybe> \"quoted\" 'single' — dash – en-dash … ellipsis",
    "«Guillemets» „Anführungszeichen“ 「括弧」『二重』【強調】、。・！？ ¡¿ @#$%^&*_+=|\\/~`",
    "The contractions: it's, IT'S, It's, you're, we've, I'm, they'll, he'd; 's 't 're 've 'm 'll 'd",
    # Whitespace
    "line one\nline two\n\nline four\r\nwindows\rmac",
    "tab\tseparated\tvalues\t\tdouble tab",
    "multiple   spaces    here     and trailing   ",
    "   leading spaces",
    "\n\nleading newlines",
    " \t \n mixed whitespace \n\t ",
    "\u00a0non-breaking\u00a0space\u3000ideographic space\u2009thin",
    # Combining characters: NFC and NFD spellings of the same text, and marks without a precomposed form
    unicodedata.normalize("NFC", "café naïve résumé Ångström Việt Nam"),
    unicodedata.normalize("NFD", "café naïve résumé Ångström Việt Nam"),
    unicodedata.normalize("NFD", "한국어 자모 분해"),
    "q\u0307\u0323 x\u0301\u0302 Z\u0335a\u0336l\u0337g\u0338o",
    # Added tokens appearing inside the text
    "<|im_start|>user\nhi<|im_end|>",
    "Say <tts_pad> and <tts_text_bos> then <tts_text_eod><|endoftext|>",
    "a<|im_start|>b<|im_end|>c<think>d</think>e<tool_call>f",
    "not a token: <|im_start| and <tts_pad > and < tts_pad>",
    # Odd inputs
    "",
    " ",
    "a",
    "\x00\x01\x7f control \u200b\u200d\ufeff zero-width",
    "Ꭰ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛 ﬁ ligature ½ ² ℃ ㎏",
]


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory) -> Path:
    """A tensor-less GGUF holding the tokenizer keys, written the way the converter writes them."""
    meta = tk.tokenizer_metadata(TOKENIZER_DIR)
    path = tmp_path_factory.mktemp("gguf") / "tokenizer.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen3-tts")
    tk.write_tokenizer_metadata(writer, meta)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tok(gguf_path) -> "tk.TextTokenizer":
    return tk.TextTokenizer.from_gguf(gguf_path)


@pytest.fixture(scope="module")
def ref():
    transformers = pytest.importorskip("transformers")
    return transformers.Qwen2TokenizerFast.from_pretrained(str(TOKENIZER_DIR))


def _target(text: str) -> str:
    return f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n"


# --- metadata ----------------------------------------------------------------------------------------------------

def test_metadata_values():
    meta = tk.tokenizer_metadata(TOKENIZER_DIR)
    assert list(meta) == list(tk.TOKENIZER_KEYS)
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "qwen2"
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == 151676
    assert tokens[IM_START] == "<|im_start|>" and tokens[IM_END] == "<|im_end|>"
    assert tokens[151671] == "<tts_pad>" and tokens[151672] == "<tts_text_bos>" and tokens[151673] == "<tts_text_eod>"
    assert tokens[NL] == "Ċ" and tokens[ASSISTANT] == "assistant"
    assert set(types[:151643]) == {1}
    assert types[IM_START] == 3 and types[151671] == 3
    assert types[151667] == 4  # <think>: added with special=false
    merges = meta["tokenizer.ggml.merges"]
    assert merges[0] == "Ġ Ġ" and not any(m.startswith("#") for m in merges[:5])
    assert len(merges) == 294166
    assert meta["tokenizer.ggml.eos_token_id"] == IM_END
    assert meta["tokenizer.ggml.padding_token_id"] == 151643
    assert meta["qwen3-tts.tokenizer.pre_regex"] == tk.QWEN2_PRE_REGEX


def test_gguf_round_trip_and_speed(gguf_path):
    meta = tk.tokenizer_metadata(TOKENIZER_DIR)
    assert tk.read_gguf_metadata(gguf_path, tk.TOKENIZER_KEYS) == meta
    start = time.perf_counter()
    tk.TextTokenizer.from_gguf(gguf_path)
    elapsed = time.perf_counter() - start
    # ~0.5 s on a 2-core machine; the bound only catches a regression to GGUFReader-like cost (~10 s).
    assert elapsed < 3.0, f"from_gguf took {elapsed:.2f} s"


def test_read_gguf_metadata_matches_gguf_reader(tmp_path):
    path = tmp_path / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen3-tts")
    writer.add_string("s", "héllo 世界")
    writer.add_uint32("u32", 4000000000)
    writer.add_int32("i32", -5)
    writer.add_float32("f32", 0.25)
    writer.add_bool("flag", True)
    writer.add_array("strs", ["a", "", "Ġb", "<|im_end|>", "日本"])
    writer.add_array("ints", [1, -2, 3])
    writer.add_tensor("t", np.arange(6, dtype=np.float32).reshape(2, 3))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    ours = tk.read_gguf_metadata(path)
    reader = gguf.GGUFReader(str(path))
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert ours == theirs
    assert tk.read_gguf_metadata(path, ["strs", "u32"]) == {"strs": theirs["strs"], "u32": 4000000000}

    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="not a GGUF file"):
        tk.read_gguf_metadata(tmp_path / "empty.gguf")
    (tmp_path / "cut.gguf").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt GGUF metadata"):
        tk.read_gguf_metadata(tmp_path / "cut.gguf")


def _copy_files(dst: Path, names) -> None:
    for name in names:
        shutil.copy(TOKENIZER_DIR / name, dst / name)


def test_metadata_missing_merges(tmp_path):
    _copy_files(tmp_path, ["vocab.json", "tokenizer_config.json"])
    with pytest.raises(ValueError, match=r"merges\.txt: tokenizer file is missing"):
        tk.tokenizer_metadata(tmp_path)


def test_metadata_corrupt_vocab(tmp_path):
    _copy_files(tmp_path, ["merges.txt", "tokenizer_config.json"])
    (tmp_path / "vocab.json").write_text('{"a": 0, "b": ', encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.json.*not valid JSON"):
        tk.tokenizer_metadata(tmp_path)
    (tmp_path / "vocab.json").write_text('["a", "b"]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.json.*expected a non-empty JSON object"):
        tk.tokenizer_metadata(tmp_path)


def _tiny_dir(tmp_path: Path, added: dict, merges: str = "#version: 0.2\na b\n") -> Path:
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2}), encoding="utf-8")
    (tmp_path / "merges.txt").write_text(merges, encoding="utf-8")
    config = {"added_tokens_decoder": added, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "tokenizer_class": "Qwen2Tokenizer"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return tmp_path


def _added(content: str, special: bool = True) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": special}


def test_metadata_tiny_and_id_gaps(tmp_path):
    ok = _tiny_dir(tmp_path, {"3": _added("<|endoftext|>"), "4": _added("<|im_end|>"), "5": _added("<x>", False)})
    meta = tk.tokenizer_metadata(ok)
    assert meta["tokenizer.ggml.tokens"] == ["a", "b", "ab", "<|endoftext|>", "<|im_end|>", "<x>"]
    assert meta["tokenizer.ggml.token_type"] == [1, 1, 1, 3, 3, 4]
    assert meta["tokenizer.ggml.merges"] == ["a b"]
    assert (meta["tokenizer.ggml.eos_token_id"], meta["tokenizer.ggml.padding_token_id"]) == (4, 3)

    _tiny_dir(tmp_path, {"3": _added("<|endoftext|>"), "7": _added("<|im_end|>")})
    with pytest.raises(ValueError, match=r"gaps.*\[4, 5, 6\]"):
        tk.tokenizer_metadata(tmp_path)

    _tiny_dir(tmp_path, {"3": _added("<|endoftext|>"), "4": _added("<|im_end|>")}, merges="#version: 0.2\na c\n")
    with pytest.raises(ValueError, match=r"merges\.txt:2"):
        tk.tokenizer_metadata(tmp_path)


# --- against transformers ------------------------------------------------------------------------------------------

def test_reference_uses_plain_qwen2_regex(ref):
    # Guards the comparison itself: a reference patched with the "Mistral" regex would make these tests meaningless.
    pre = json.loads(ref.backend_tokenizer.to_str())["pre_tokenizer"]
    assert pre["pretokenizers"][0]["pattern"]["Regex"] == tk.QWEN2_PRE_REGEX


def test_pipeline_matches_reference(tok, ref):
    ours = json.loads(tok.backend.to_str())
    theirs = json.loads(ref.backend_tokenizer.to_str())
    for part in ("normalizer", "pre_tokenizer", "decoder", "post_processor", "added_tokens"):
        assert ours[part] == theirs[part], part


@pytest.mark.parametrize("text", CORPUS)
def test_encode_matches_reference(tok, ref, text):
    assert tok.encode(text) == ref(text)["input_ids"]
    assert tok.encode(_target(text)) == ref(_target(text))["input_ids"]


def test_encode_whole_corpus_matches_reference(tok, ref):
    text = "\n".join(CORPUS)
    assert tok.encode(text) == ref(text)["input_ids"]


def test_mixed_case_split_is_qwen2(tok):
    pieces = [p for p, _ in tok.backend.pre_tokenizer.pre_tokenize_str("HelloWorld iPhone McDonald's")]
    assert pieces == ["HelloWorld", "ĠiPhone", "ĠMcDonald", "'s"]


@pytest.mark.parametrize("text", CORPUS)
def test_decode_matches_reference(tok, ref, text):
    ids = tok.encode(_target(text))
    assert tok.decode(ids) == ref.decode(ids)
    # Decoding gives back the NFC form of the input: the normalizer composes, nothing else is lost.
    assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFC", text)


def test_decode_partial_utf8_matches_reference(tok, ref):
    ids = tok.encode("😀 世界")
    for cut in range(len(ids) + 1):
        assert tok.decode(ids[:cut]) == ref.decode(ids[:cut])


@pytest.mark.parametrize("text", CORPUS)
def test_templates_match_reference_slicing(tok, ref, text):
    full = ref(_target(text))["input_ids"]
    if full[:3] == [IM_START, ASSISTANT, NL] and full[-5:] == [IM_END, NL, IM_START, ASSISTANT, NL]:
        assert tok.text_ids(text) == full[3:-5]
    else:
        with pytest.raises(ValueError, match="crossed the boundary"):
            tok.text_ids(text)
    full = ref(f"<|im_start|>assistant\n{text}<|im_end|>\n")["input_ids"]
    if full[:3] == [IM_START, ASSISTANT, NL] and full[-2:] == [IM_END, NL]:
        assert tok.ref_text_ids(text) == full[3:-2]
    else:
        with pytest.raises(ValueError, match="crossed the boundary"):
            tok.ref_text_ids(text)
    assert tok.instruct_ids(text) == ref(f"<|im_start|>user\n{text}<|im_end|>\n")["input_ids"]


# --- templates on known ids ----------------------------------------------------------------------------------------

def test_known_template_ids(tok):
    assert tok.encode(_target("Hello, world!")) == [IM_START, ASSISTANT, NL, 9707, 11, 1879, 0, IM_END, NL,
                                                    IM_START, ASSISTANT, NL]
    assert tok.text_ids("Hello, world!") == [9707, 11, 1879, 0]
    assert tok.ref_text_ids("Hello, world!") == [9707, 11, 1879, 0]
    assert tok.instruct_ids("Hello, world!") == [IM_START, USER, NL, 9707, 11, 1879, 0, IM_END, NL]
    assert tok.role_ids() == [IM_START, ASSISTANT, NL]
    assert tok.text_ids("") == []
    assert (tok.im_start_id, tok.im_end_id, tok.assistant_id, tok.user_id, tok.newline_id) == (
        IM_START, IM_END, ASSISTANT, USER, NL)
    assert (tok.eos_token_id, tok.pad_token_id, tok.vocab_size) == (IM_END, 151643, 151676)


def test_special_tokens_are_atomic(tok):
    assert tok.encode("<tts_pad>") == [151671]
    assert tok.encode("x<|im_start|>y") == tok.encode("x") + [IM_START] + tok.encode("y")


def test_template_rejects_merge_across_boundary(tok):
    # "assistant\n\nHello": "\n\n" is one pre-token, so BPE merges it into one id and the slice would be wrong.
    with pytest.raises(ValueError, match="crossed the boundary"):
        tok.text_ids("\nHello")
    with pytest.raises(ValueError, match="crossed the boundary"):
        tok.ref_text_ids("\n\nHello")
    assert tok.text_ids(" Hello") == tok.encode(" Hello")


def test_decode_round_trip(tok):
    for text in CORPUS:
        ids = tok.text_ids(text.lstrip()) if text.strip() else tok.encode(text)
        assert tok.decode(ids) == unicodedata.normalize("NFC", text.lstrip() if text.strip() else text)
