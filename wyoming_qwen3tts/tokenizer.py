"""Qwen2 text tokenizer for Qwen3-TTS, stored in and rebuilt from the GGUF file.

The converter calls :func:`tokenizer_metadata` on a Hugging Face checkpoint directory and writes the returned
values under the ``tokenizer.ggml.*`` / ``qwen3-tts.tokenizer.pre_regex`` keys of docs/gguf.md (the helper
:func:`write_tokenizer_metadata` does exactly that with the documented value types). :class:`TextTokenizer`
reads those keys back and rebuilds, with the ``tokenizers`` library, the same pipeline that transformers'
``Qwen2TokenizerFast`` builds from ``vocab.json``/``merges.txt`` (``Qwen2Converter`` in transformers 4.57.3):

* NFC normalizer;
* pre-tokenizer ``Sequence[Split(QWEN2_PRE_REGEX, "isolated"), ByteLevel(add_prefix_space=False,
  use_regex=False)]``;
* byte-level BPE (no unk token, no dropout, no byte fallback) and a ByteLevel decoder;
* the added tokens of ``tokenizer_config.json`` (``<|im_start|>``, ``<tts_pad>``, ...) as atomic tokens, all with
  ``normalized/lstrip/rstrip/single_word = False``; ``special`` is kept (GGUF token type 3 = special, 4 = not).

Which split regex, and why
--------------------------
The reference (``qwen-tts`` 0.1.1) loads its processor with ``fix_mistral_regex=True``. In transformers 4.57.3
that replaces the Qwen2 split regex by a "fixed Mistral" one *only* when the checkpoint is loaded from a local
directory whose ``config.json`` has no ``transformers_version`` or one in (4.57.2, 5.0); loading by hub id keeps
the Qwen2 regex (model-model.md 4.1). We implement the plain Qwen2 regex: it is what the tokenizer files specify
(``tokenizer_class: Qwen2Tokenizer``), what the hub-id path of the reference uses, and what the Qwen LLMs were
trained with. The two regexes agree on lower/upper-case words, CJK, digits and punctuation; they differ on
mixed-case words: ``HelloWorld iPhone McDonald's`` splits as ``HelloWorld| iPhone| McDonald|'s`` here, and as
``Hello|World| i|Phone| Mc|Donald|'s`` in a reference loaded from a local directory, so token ids differ there.

Prompt templates (model-model.md 4.1)
---------------------------------
Each template is tokenised as one string, then sliced the way the model does; the slices assume that no BPE merge
crossed the role prefix / suffix boundary, which :meth:`TextTokenizer.text_ids` and
:meth:`TextTokenizer.ref_text_ids` check (a text that starts with a newline, e.g., merges with the ``\\n`` after
``assistant`` and is rejected; strip it first).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from .gguf_reader import read_gguf_metadata  # noqa: F401  (re-exported: the tokenizer's source of truth)

__all__ = [
    "QWEN2_PRE_REGEX",
    "TOKENIZER_KEYS",
    "TextTokenizer",
    "read_gguf_metadata",
    "tokenizer_metadata",
    "write_tokenizer_metadata",
]

# Qwen2's pre-tokenizer split regex, verbatim from transformers 4.57.3 (Qwen2Converter / PRETOKENIZE_REGEX).
QWEN2_PRE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

KEY_MODEL = "tokenizer.ggml.model"
KEY_PRE = "tokenizer.ggml.pre"
KEY_TOKENS = "tokenizer.ggml.tokens"
KEY_TOKEN_TYPE = "tokenizer.ggml.token_type"
KEY_MERGES = "tokenizer.ggml.merges"
KEY_EOS_ID = "tokenizer.ggml.eos_token_id"
KEY_PAD_ID = "tokenizer.ggml.padding_token_id"
KEY_PRE_REGEX = "qwen3-tts.tokenizer.pre_regex"

# Every key tokenizer_metadata() returns, in the order of docs/gguf.md.
TOKENIZER_KEYS = (
    KEY_MODEL, KEY_PRE, KEY_TOKENS, KEY_TOKEN_TYPE, KEY_MERGES, KEY_EOS_ID, KEY_PAD_ID, KEY_PRE_REGEX,
)

# llama.cpp token types (LLAMA_TOKEN_TYPE_*), as documented in docs/gguf.md.
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_CONTROL = 3       # added token with "special": true
TOKEN_TYPE_USER_DEFINED = 4  # added token with "special": false

_SUPPORTED_TOKENIZER_CLASSES = ("Qwen2Tokenizer", "Qwen2TokenizerFast")
# Added-token flags the GGUF cannot carry: we only accept checkpoints where they are all false (as in Qwen3-TTS).
_UNSUPPORTED_ADDED_FLAGS = ("lstrip", "rstrip", "single_word", "normalized")


# --------------------------------------------------------------------------------------------------------------
# Checkpoint -> metadata
# --------------------------------------------------------------------------------------------------------------

def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"{path}: tokenizer file is missing")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e


def _token_content(value: Any, what: str, path: Path) -> str:
    # tokenizer_config.json stores special tokens either as plain strings or as serialised AddedToken dicts.
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise ValueError(f"{path}: {what} is missing or not a token string (got {value!r})")
    return value


def tokenizer_metadata(checkpoint_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` of a Hugging Face checkpoint directory.

    Returns the values of the GGUF tokenizer keys (see :data:`TOKENIZER_KEYS` and docs/gguf.md) as plain Python
    values. Raises ``ValueError`` for missing or malformed files.
    """
    d = Path(checkpoint_dir)
    vocab_path, merges_path, config_path = d / "vocab.json", d / "merges.txt", d / "tokenizer_config.json"

    vocab = _load_json(vocab_path)
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"{vocab_path}: expected a non-empty JSON object mapping token -> id")
    config = _load_json(config_path)
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object")

    tokenizer_class = config.get("tokenizer_class")
    if tokenizer_class is not None and tokenizer_class not in _SUPPORTED_TOKENIZER_CLASSES:
        raise ValueError(f"{config_path}: tokenizer_class {tokenizer_class!r} is not a Qwen2 tokenizer")
    if config.get("add_prefix_space"):
        raise ValueError(f"{config_path}: add_prefix_space=true is not supported")

    # id -> token; vocab ids and added-token ids must together cover 0..N-1 exactly once.
    by_id: dict[int, str] = {}
    for token, idx in vocab.items():
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise ValueError(f"{vocab_path}: token {token!r} has invalid id {idx!r}")
        if idx in by_id:
            raise ValueError(f"{vocab_path}: id {idx} is used by both {by_id[idx]!r} and {token!r}")
        by_id[idx] = token

    added = config.get("added_tokens_decoder", {})
    if not isinstance(added, dict):
        raise ValueError(f"{config_path}: added_tokens_decoder must be an object")
    token_to_id = dict(vocab)
    special_of: dict[int, bool] = {}
    for key, entry in added.items():
        try:
            idx = int(key)
        except ValueError:
            raise ValueError(f"{config_path}: added_tokens_decoder key {key!r} is not an id") from None
        if idx < 0 or not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            raise ValueError(f"{config_path}: malformed added_tokens_decoder entry {key!r}: {entry!r}")
        content = entry["content"]
        flags = [f for f in _UNSUPPORTED_ADDED_FLAGS if entry.get(f)]
        if flags:
            raise ValueError(f"{config_path}: added token {content!r} sets {flags}, which the GGUF tokenizer "
                             "does not support (only special=true/false)")
        if by_id.get(idx, content) != content:
            raise ValueError(f"{config_path}: added token {content!r} has id {idx}, "
                             f"which vocab.json gives to {by_id[idx]!r}")
        if token_to_id.get(content, idx) != idx:
            raise ValueError(f"{config_path}: added token {content!r} has id {idx}, "
                             f"but it already has id {token_to_id[content]}")
        by_id[idx] = content
        token_to_id[content] = idx
        special_of[idx] = bool(entry.get("special", False))

    n_tokens = max(by_id) + 1
    if len(by_id) != n_tokens:
        missing = [i for i in range(n_tokens) if i not in by_id]
        raise ValueError(f"{d}: token ids have gaps: {len(missing)} ids in 0..{n_tokens - 1} have no token "
                         f"(first: {missing[:10]})")
    tokens = [by_id[i] for i in range(n_tokens)]
    token_type = [TOKEN_TYPE_NORMAL] * n_tokens
    for idx, special in special_of.items():
        token_type[idx] = TOKEN_TYPE_CONTROL if special else TOKEN_TYPE_USER_DEFINED

    merges = _read_merges(merges_path, token_to_id)

    eos = _token_content(config.get("eos_token"), "eos_token", config_path)
    pad = _token_content(config.get("pad_token"), "pad_token", config_path)
    for what, content in (("eos_token", eos), ("pad_token", pad)):
        if content not in token_to_id:
            raise ValueError(f"{config_path}: {what} {content!r} is not in the vocabulary")

    return {
        KEY_MODEL: "gpt2",
        KEY_PRE: "qwen2",
        KEY_TOKENS: tokens,
        KEY_TOKEN_TYPE: token_type,
        KEY_MERGES: merges,
        KEY_EOS_ID: token_to_id[eos],
        KEY_PAD_ID: token_to_id[pad],
        KEY_PRE_REGEX: QWEN2_PRE_REGEX,
    }


def _read_merges(path: Path, token_to_id: Mapping[str, int]) -> list[str]:
    if not path.is_file():
        raise ValueError(f"{path}: tokenizer file is missing")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8: {e}") from e
    merges = []
    for lineno, line in enumerate(lines, 1):
        # Same rules as transformers' Qwen2Tokenizer: strip, skip blank lines and the "#version" header.
        line = line.strip()
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        # Byte-level tokens never contain a space (it is mapped to "Ġ"), so a merge is exactly two tokens; the
        # tokenizers library rejects merges whose parts or result are not in the vocabulary, so check that here
        # to fail at conversion time rather than at load time.
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path}:{lineno}: expected 'left right', got {line!r}")
        if parts[0] not in token_to_id or parts[1] not in token_to_id or parts[0] + parts[1] not in token_to_id:
            raise ValueError(f"{path}:{lineno}: merge {line!r} uses or makes a token missing from vocab.json")
        merges.append(line)
    if not merges:
        raise ValueError(f"{path}: no merges")
    return merges


def write_tokenizer_metadata(writer: gguf.GGUFWriter, meta: Mapping[str, Any]) -> None:
    """Add the tokenizer keys of ``meta`` to a GGUF writer with the value types of docs/gguf.md."""
    writer.add_string(KEY_MODEL, meta[KEY_MODEL])
    writer.add_string(KEY_PRE, meta[KEY_PRE])
    writer.add_array(KEY_TOKENS, list(meta[KEY_TOKENS]))
    writer.add_key_value(KEY_TOKEN_TYPE, list(meta[KEY_TOKEN_TYPE]), gguf.GGUFValueType.ARRAY,
                         sub_type=gguf.GGUFValueType.INT32)
    writer.add_array(KEY_MERGES, list(meta[KEY_MERGES]))
    writer.add_uint32(KEY_EOS_ID, int(meta[KEY_EOS_ID]))
    writer.add_uint32(KEY_PAD_ID, int(meta[KEY_PAD_ID]))
    writer.add_string(KEY_PRE_REGEX, meta[KEY_PRE_REGEX])


# --------------------------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------------------------

class TextTokenizer:
    """Qwen2 byte-level BPE tokenizer rebuilt from GGUF tokenizer metadata, plus the Qwen3-TTS prompt templates."""

    def __init__(self, tokenizer: Tokenizer, tokens: list[str], token_type: list[int], eos_token_id: int,
                 pad_token_id: int):
        # Use from_metadata() / from_gguf(); this only wires up an already built tokenizers.Tokenizer.
        self._tok = tokenizer
        self.tokens = tokens
        self.token_type = token_type
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id

        self.im_start_id = self._single_id("<|im_start|>")
        self.im_end_id = self._single_id("<|im_end|>")
        self.newline_id = self._single_id("\n")
        self.assistant_id = self._single_id("assistant")
        self.user_id = self._single_id("user")
        # The ids the model's slices drop (model.md 4.1); checked on every template to catch merges across them.
        self._target_prefix = [self.im_start_id, self.assistant_id, self.newline_id]
        self._target_suffix = [self.im_end_id, self.newline_id, self.im_start_id, self.assistant_id,
                               self.newline_id]
        self._ref_suffix = [self.im_end_id, self.newline_id]

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> "TextTokenizer":
        """Build from a dict holding the keys of :data:`TOKENIZER_KEYS` (as returned by tokenizer_metadata)."""
        missing = [k for k in TOKENIZER_KEYS if k not in meta]
        if missing:
            raise ValueError(f"tokenizer metadata is missing keys: {missing}")
        if meta[KEY_MODEL] != "gpt2":
            raise ValueError(f"{KEY_MODEL} is {meta[KEY_MODEL]!r}, expected 'gpt2' (byte-level BPE)")
        # The normalizer and byte-level steps below are Qwen2's; only the split regex is taken from the file.
        if meta[KEY_PRE] != "qwen2":
            raise ValueError(f"{KEY_PRE} is {meta[KEY_PRE]!r}, expected 'qwen2'")
        tokens = list(meta[KEY_TOKENS])
        token_type = [int(t) for t in meta[KEY_TOKEN_TYPE]]
        if len(token_type) != len(tokens):
            raise ValueError(f"{KEY_TOKEN_TYPE} has {len(token_type)} entries for {len(tokens)} tokens")
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise ValueError(f"{KEY_TOKENS} holds duplicate token strings")
        merges = []
        for m in meta[KEY_MERGES]:
            parts = m.split(" ")
            if len(parts) != 2:
                raise ValueError(f"malformed merge {m!r} in {KEY_MERGES}")
            merges.append((parts[0], parts[1]))

        # All tokens, added ones included, go into the BPE vocabulary so that every id is fixed by the file;
        # added tokens are then registered (by content, which finds those ids) so that they match atomically
        # before the normalizer and pre-tokenizer run. BPE never looks whole words up in the vocabulary, so the
        # extra entries do not change how plain text is split.
        bpe = models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                         end_of_word_suffix="", fuse_unk=False, byte_fallback=False)
        tok = Tokenizer(bpe)
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(meta[KEY_PRE_REGEX]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)

        added = [(i, t) for i, t in enumerate(tokens) if token_type[i] != TOKEN_TYPE_NORMAL]
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False,
                                           single_word=False)
                                for i, t in added if token_type[i] == TOKEN_TYPE_CONTROL])
        tok.add_tokens([AddedToken(t, special=False, normalized=False, lstrip=False, rstrip=False,
                                   single_word=False)
                        for i, t in added if token_type[i] != TOKEN_TYPE_CONTROL])
        for i, t in added:
            if tok.token_to_id(t) != i:
                raise ValueError(f"added token {t!r} got id {tok.token_to_id(t)}, expected {i}")

        return cls(tok, tokens, token_type, int(meta[KEY_EOS_ID]), int(meta[KEY_PAD_ID]))

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> "TextTokenizer":
        """Build from the tokenizer keys of a GGUF file (docs/gguf.md)."""
        meta = read_gguf_metadata(path, TOKENIZER_KEYS)
        missing = [k for k in TOKENIZER_KEYS if k not in meta]
        if missing:
            raise ValueError(f"{path}: GGUF has no tokenizer keys {missing}")
        return cls.from_metadata(meta)

    def _single_id(self, text: str) -> int:
        ids = self.encode(text)
        if len(ids) != 1:
            raise ValueError(f"{text!r} should be one token, got {ids}")
        return ids[0]

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def backend(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; added tokens written in the text (``<|im_start|>``...) become their ids."""
        return self._tok.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, special tokens included (transformers' default ``skip_special_tokens=False``)."""
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def role_ids(self) -> list[int]:
        """``<|im_start|>assistant\\n``: the role prefix the model takes from ``input_id[:, :3]``."""
        return list(self._target_prefix)

    def text_ids(self, text: str) -> list[int]:
        """Target text tokens: the target template tokenised whole, sliced ``[3:-5]``."""
        return self._inner_ids(f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n", text,
                               self._target_suffix)

    def ref_text_ids(self, ref_text: str) -> list[int]:
        """Reference-transcript tokens (voice clone): ``<|im_start|>assistant\\n{ref_text}<|im_end|>\\n`` sliced
        ``[3:-2]``."""
        return self._inner_ids(f"<|im_start|>assistant\n{ref_text}<|im_end|>\n", ref_text, self._ref_suffix)

    def instruct_ids(self, instruct: str) -> list[int]:
        """Instruction tokens: ``<|im_start|>user\\n{instruct}<|im_end|>\\n``, used whole."""
        return self.encode(f"<|im_start|>user\n{instruct}<|im_end|>\n")

    def _inner_ids(self, template: str, text: str, suffix: list[int]) -> list[int]:
        """The tokens of ``template`` (``text`` in the assistant's role) between the role prefix and ``suffix``."""
        ids = self.encode(template)
        prefix = self._target_prefix
        if len(ids) < len(prefix) + len(suffix) or ids[:len(prefix)] != prefix or ids[-len(suffix):] != suffix:
            raise ValueError(
                f"the prompt template of {text!r} did not tokenise into the expected role prefix {prefix} and "
                f"suffix {suffix} (got {ids[:3]} ... {ids[-5:]}): a BPE merge crossed the boundary, e.g. a text "
                "starting with a newline; strip leading whitespace/newlines from the text")
        return ids[len(prefix):len(ids) - len(suffix)]
