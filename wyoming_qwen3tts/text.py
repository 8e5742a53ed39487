"""Text preparation for synthesis: clean the request, read SSML, cut the text into sentences.

The engine synthesizes one utterance at a time and its quality drops on long inputs, while Home Assistant sends
anything from one word to a whole LLM answer, as one string (``synthesize``) or as a stream of small chunks
(``synthesize-chunk``).  This module turns either into a list of :class:`Segment` (a sentence to speak, or a pause)
so that the handler can synthesize sentence by sentence and start streaming audio after the first one.

* :func:`prepare` is the entry point for a whole request: limits, cleaning, SSML or plain text, sentences.
* :func:`parse_ssml` reads the SSML subset that matters for a single-voice model: text, ``<break>`` and sentence /
  paragraph boundaries; all other markup is dropped and its text spoken.
* :func:`split_sentences` and :class:`SentenceStream` cut plain text into sentences with the ``sentence-stream``
  package (the splitter wyoming-piper uses, so both servers break text the same way), plus a few rules it lacks
  (see ``_post_split``), and cut sentences longer than :data:`MAX_SENTENCE_CHARS`.  Both give the same sentences
  for the same text, however the stream is chunked (``tests/test_text.py`` checks this on random chunkings).
"""

from __future__ import annotations

import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.parsers.expat import ErrorString

import regex
from sentence_stream import SentenceBoundaryDetector

from .request import InvalidRequest

__all__ = [
    "DEFAULT_MAX_BREAK_S",
    "DEFAULT_MAX_CHARS",
    "MAX_SENTENCE_CHARS",
    "Segment",
    "SentenceStream",
    "clean_text",
    "parse_ssml",
    "prepare",
    "split_sentences",
]

MAX_SENTENCE_CHARS = 400
"""Longest piece of text handed to the model at once.  The model's prosody and stability degrade on very long
inputs (and its frame budget grows with them), so a "sentence" without punctuation, e.g. 2000 characters of run-on
LLM output or CJK text with only commas, is cut into pieces of at most this many characters."""

DEFAULT_MAX_BREAK_S = 10.0
"""Longest pause one SSML ``<break>`` (or a run of adjacent breaks) may ask for."""

DEFAULT_MAX_CHARS = 5000
"""Default request limit of :func:`prepare`; the handler normally passes its own."""

# SSML <break strength="..."> in seconds; a bare <break/> is "medium" (as in the SSML 1.1 defaults most engines use)
BREAK_STRENGTHS = {
    "none": 0.0,
    "x-weak": 0.1,
    "weak": 0.25,
    "medium": 0.5,
    "strong": 0.75,
    "x-strong": 1.0,
}


@dataclass(frozen=True)
class Segment:
    """One step of a prepared request: either ``text`` (one sentence to synthesize) or ``silence_s`` (a pause)."""

    text: str | None = None
    silence_s: float | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.silence_s is None):
            raise ValueError("a Segment is either text or silence_s")

    @property
    def is_silence(self) -> bool:
        return self.silence_s is not None


# --------------------------------------------------------------------------------------------------------------
# cleaning

# C0/C1 control characters other than tab and newline (carriage returns become newlines first)
_CONTROL_RE = regex.compile(r"[^\P{Cc}\t\n]")
_SURROGATE_RE = regex.compile(r"[\ud800-\udfff]")
_WS_RE = regex.compile(r"\s+")


def _fix_surrogates(text: str) -> str:
    # Text decoded from JSON chunk by chunk can carry an astral character (an emoji) as two lone surrogates
    # ("\ud83d" + "\ude00"): join valid pairs into the real character and drop unpaired halves, which cannot be
    # encoded as UTF-8 and would crash the tokenizer.
    if not _SURROGATE_RE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "ignore")


def clean_text(text: str) -> str:
    """Line breaks to ``\\n``, control characters other than newline and tab removed, lone surrogates removed.

    Everything else (emoji, format characters such as the zero-width joiner inside emoji sequences, any script) is
    kept: the tokenizer handles it and dropping it could change what is said.
    """
    text = _fix_surrogates(text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL_RE.sub("", text)


def _normalize_ws(text: str) -> str:
    # One space for any run of whitespace (newlines inside a sentence included), none at the ends.
    return _WS_RE.sub(" ", text).strip()


# --------------------------------------------------------------------------------------------------------------
# SSML

_DOCTYPE_RE = regex.compile(r"<!\s*(?:DOCTYPE|ENTITY)", regex.IGNORECASE)
_XML_DECL_RE = regex.compile(r"\A\s*<\?xml\b[^>]*\?>")
_TIME_RE = regex.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)", regex.IGNORECASE)
# The SSML is always wrapped in this element: SSML without a <speak> root (or with text around it) is accepted,
# and the real <speak> is just a container inside it.  Names starting with "_" are valid XML and not SSML.
_ROOT = "_ssml"
_ROOT_OPEN = f"<{_ROOT}>"
# elements whose content is not spoken
_SILENT_ELEMENTS = {"desc", "lexicon", "meta", "metadata", "mark"}
# elements whose start and end are sentence boundaries
_BOUNDARY_ELEMENTS = {"p", "s", "paragraph", "sentence"}


class _NoDoctypeBuilder(ET.TreeBuilder):
    # Second line of defence behind the _DOCTYPE_RE check: expat reports any DTD to the target's doctype().
    def doctype(self, name, pubid, system):  # noqa: ANN001 - TreeBuilder's signature
        raise InvalidRequest("invalid SSML: DOCTYPE and entity declarations are not allowed")


def _local_name(tag: object) -> str:
    # "{http://www.w3.org/2001/10/synthesis}break" -> "break"; comments / processing instructions have a
    # function as their tag and are skipped by the caller
    return tag.rsplit("}", 1)[-1].lower() if isinstance(tag, str) else ""


def _break_seconds(attrib: dict[str, str]) -> float:
    # SSML: time wins over strength.  Values that cannot be read fall back rather than failing the request: the
    # intent (a pause) is clear, only its length is not.
    time = attrib.get("time")
    if time is not None:
        m = _TIME_RE.fullmatch(time.strip())
        if m:
            value = float(m[1])
            return value / 1000.0 if m[2].lower() == "ms" else value
    strength = attrib.get("strength", "medium").strip().lower()
    return BREAK_STRENGTHS.get(strength, BREAK_STRENGTHS["medium"])


def parse_ssml(ssml: str, max_break_s: float = DEFAULT_MAX_BREAK_S) -> list[Segment]:
    """Read SSML into text and silence segments, in document order.

    Text segments are whitespace-normalised runs of text (possibly several sentences: :func:`prepare` splits them);
    a text segment ends at every ``<p>``/``<s>`` boundary and every ``<break>``.  All markup is dropped and its
    text spoken; ``<sub alias="...">`` speaks the alias; ``<desc>``, ``<meta>``, ``<metadata>``, ``<lexicon>`` and
    ``<mark>`` are not spoken.  ``<break>`` takes ``time="500ms"``/``time="1.5s"`` or ``strength=...`` (a bare
    break is "medium"); adjacent breaks merge into one pause, and every pause is clamped to ``max_break_s``.  A
    zero-length break (``strength="none"``, ``time="0ms"``) is no pause and does not split the text.

    Raises ``InvalidRequest("invalid SSML: ...")`` for malformed XML and for any DOCTYPE or entity declaration: SSML
    needs neither, and refusing them outright closes the entity-expansion and external-entity attacks whatever the
    expat version.
    """
    if max_break_s < 0:
        raise ValueError("max_break_s must not be negative")
    # Control characters are not even legal XML: remove them as for plain text (prepare already has).
    ssml = clean_text(ssml).lstrip("\ufeff")
    if _DOCTYPE_RE.search(ssml):
        raise InvalidRequest("invalid SSML: DOCTYPE and entity declarations are not allowed")
    body = _XML_DECL_RE.sub("", ssml, count=1)  # an XML declaration is only legal at the very start
    parser = ET.XMLParser(target=_NoDoctypeBuilder())
    try:
        parser.feed(f"{_ROOT_OPEN}{body}</{_ROOT}>")
        root = parser.close()
    except ET.ParseError as e:
        line, column = e.position
        if line == 1:
            column = max(0, column - len(_ROOT_OPEN))
        raise InvalidRequest(f"invalid SSML: {ErrorString(e.code)} (line {line}, column {column + 1})") from None

    segments: list[Segment] = []
    text_parts: list[str] = []

    def flush_text() -> None:
        text = _normalize_ws("".join(text_parts))
        text_parts.clear()
        if text:
            segments.append(Segment(text=text))

    def add_silence(seconds: float) -> None:
        if seconds <= 0:
            return
        flush_text()
        if segments and segments[-1].is_silence:  # adjacent breaks: one pause, clamped as a whole
            seconds += segments.pop().silence_s  # type: ignore[operator]
        segments.append(Segment(silence_s=min(seconds, max_break_s)))

    # Iterative walk (deeply nested input must not hit the recursion limit): ("start", el) handles the element and
    # its text, queues its children, then ("end", el) closes it and speaks its tail.
    stack: list[tuple[str, ET.Element]] = [("start", root)]
    while stack:
        event, el = stack.pop()
        name = _local_name(el.tag)
        if event == "end":
            if name in _BOUNDARY_ELEMENTS:
                flush_text()
            if el is not root and el.tail:
                text_parts.append(el.tail)
            continue
        stack.append(("end", el))
        if not name:  # comment or processing instruction: nothing inside is spoken
            continue
        if name in _BOUNDARY_ELEMENTS:
            flush_text()
        if name == "break":
            add_silence(_break_seconds(el.attrib))
            continue
        if name == "sub" and "alias" in el.attrib:
            text_parts.append(el.attrib["alias"])
            continue
        if name in _SILENT_ELEMENTS:
            continue
        if el.text:
            text_parts.append(el.text)
        stack.extend(("start", child) for child in reversed(el))
    flush_text()
    return segments


# --------------------------------------------------------------------------------------------------------------
# sentences

# What sentence-stream 1.3.0 does (read from its source): a sentence ends at
#   * [.!?…] (and Arabic ؟, Devanagari ।॥) plus closing quotes/brackets, followed by whitespace and an upper-case
#     or caseless letter (\p{Lu}\p{Lt}\p{Lo}: CJK, Hangul, Arabic... count), or by a numbered-list item;
#     "Dr." / "Uhr." (a capital plus at most two letters and a dot) is taken for an abbreviation and not split;
#   * Chinese/Japanese 。！？ and … / …… plus closers, with no whitespace needed (so CJK *is* split, and Japanese
#     too since it uses the same full stops); Korean uses ". " and splits through the first rule;
#   * a blank line.
#   It also removes markdown *asterisks*.
# Added here (_post_split), because the library misses them:
#   * a sentence end followed by an opening mark: Spanish "Hola. ¿Qué tal?", 'He left. "Why?"', "Done. (Yes.)":
#     the library wants the capital right after the whitespace;
#   * ASCII .!? between CJK characters with no space, "你好!我很好." (LLMs sometimes emit half-width punctuation
#     in Chinese): the library's ASCII rule wants whitespace after it.

_CLOSERS = "'\"\\)\\]\\}’”»」』）》】〕〉"
# (no look-behinds: regex tries those at every position, which is slow on long text)
_OPENER_SPLIT_RE = regex.compile(
    rf"[.!?…؟।॥][{_CLOSERS}]*(\s+)(?=[¿¡\"“‘«„(\[]+\s?[\p{{Lu}}\p{{Lt}}\p{{Lo}}])"
)
_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}ー"
_CJK_ASCII_SPLIT_RE = regex.compile(rf"[{_CJK}][.!?．｡]+[{_CLOSERS}]*(?=[{_CJK}\p{{Hangul}}])")
# A word that is an abbreviation ("Dr.", "Sr.", "z.B.", "e.g."): no split after it.  Only looks at a few
# characters before the split point, so that the decision never depends on text far away.
_CLOSER_CHARS = _CLOSERS.replace("\\", "")
_ABBREVIATION_RE = regex.compile(r"(?:(?<![\p{L}.])\p{Lu}\p{L}{0,2}|(?:\p{L}\.){1,}\p{L})\.$")

# Clause punctuation preferred for cutting long sentences (ASCII ones only when a space follows: "3,5", "10:30")
# ((?r): search backwards, for the last one; (?=.) keeps the cut inside the window)
_CLAUSE_RE = regex.compile(r"(?r)[，、；：](?=.)|[,;:](?= )", regex.DOTALL)
# Characters that must not start a piece after a hard cut (closing punctuation) or that belong to the character
# before them (combining marks, variation selectors, emoji modifiers, zero-width joiner)
_NO_LEADING = frozenset(".,;:!?…。，、；：！？" + "'\")]}’”»」』）》】〕〉")


def _can_cut_before(text: str, i: int) -> bool:
    ch, prev = text[i], text[i - 1]
    if ch in _NO_LEADING or prev == "\u200d" or ch == "\u200d":
        return False
    if unicodedata.category(ch).startswith("M") or "\ufe00" <= ch <= "\ufe0f" or "\U0001f3fb" <= ch <= "\U0001f3ff":
        return False
    return not ("\U000e0020" <= ch <= "\U000e007f")  # emoji tag sequences (flags of regions)


def _cut_position(window: str) -> int:
    """Where to end the first piece of a text longer than MAX_SENTENCE_CHARS, given its first MAX+1 characters.

    Only ``window`` is looked at, so the result is the same for any longer text with the same start: this is what
    lets :class:`SentenceStream` emit pieces of a long sentence before the sentence has ended.
    """
    limit, half = MAX_SENTENCE_CHARS, MAX_SENTENCE_CHARS // 2
    # 1. after the last clause punctuation in the second half of the window: the most natural place for a pause
    m = _CLAUSE_RE.search(window, half, limit + 1)
    if m:
        return m.end()
    # 2. at the last space (the text is whitespace-normalised: spaces only)
    i = window.rfind(" ")
    if i > 0:
        return i
    # 3. no space at all (CJK, Thai, a URL...): anywhere, but not inside a character cluster or before punctuation
    for c in range(limit, half, -1):
        if _can_cut_before(window, c):
            return c
    return limit


def _cut_long(part: str, complete: bool = True) -> tuple[list[str], str]:
    """Cut ``part`` into pieces of at most MAX_SENTENCE_CHARS characters.

    Returns (pieces, rest).  With ``complete`` the rest is empty (the last piece is in ``pieces``); without it
    ``part`` may continue later, so only pieces that no continuation can change are returned, and the start of
    the last one stays in ``rest``.
    """
    pieces = []
    while len(part) > MAX_SENTENCE_CHARS:
        c = _cut_position(part[: MAX_SENTENCE_CHARS + 1])
        piece, part = part[:c].rstrip(), part[c:].lstrip()
        if piece:
            pieces.append(piece)
    if complete:
        if part:
            pieces.append(part)
        part = ""
    return pieces, part


def _post_split(text: str) -> list[str]:
    """Split a (whitespace-normalised) sentence from sentence-stream at the boundaries it misses (see above)."""
    cuts = [0]
    for m in _OPENER_SPLIT_RE.finditer(text):
        if not _ABBREVIATION_RE.search(text[max(0, m.start(1) - 8) : m.start(1)].rstrip(_CLOSER_CHARS)):
            cuts.append(m.start(1))
    cuts.extend(m.end() for m in _CJK_ASCII_SPLIT_RE.finditer(text))
    cuts = sorted(set(cuts))
    cuts.append(len(text))
    return [p for a, b in zip(cuts, cuts[1:]) if (p := text[a:b].strip())]


def _pieces(sentence: str) -> list[str]:
    """One sentence from sentence-stream -> the pieces handed to the model."""
    out: list[str] = []
    for part in _post_split(_normalize_ws(sentence)):
        out.extend(_cut_long(part)[0])
    return out


def split_sentences(text: str) -> list[str]:
    """Cut a whole text into sentences: non-empty, whitespace-normalised, at most MAX_SENTENCE_CHARS long."""
    detector = SentenceBoundaryDetector()
    sentences = list(detector.add_chunk(clean_text(text)))
    if rest := detector.finish():
        sentences.append(rest)
    return [piece for sentence in sentences for piece in _pieces(sentence)]


# Characters that can still turn into (or be part of) a sentence boundary depending on what follows them:
# whitespace, digits (numbered lists: "... end. 12. Next"), sentence-end punctuation, closing and opening marks.
# Any other character (a letter, a comma, an emoji...) settles every candidate boundary before it, for
# sentence-stream's rules and for _post_split's alike.
_TAIL_CHARS = frozenset(".!?…؟।॥。！？．｡" + "'\")]}’”»」』）》】〕〉" + "¿¡“‘«„([")


def _settled_end(text: str) -> int:
    """Length of the longest prefix of ``text`` that ends with a character not in the tail set (0 if none)."""
    end = len(text)
    while end > 0 and (text[end - 1] in _TAIL_CHARS or text[end - 1].isspace() or text[end - 1].isdigit()):
        end -= 1
    return end


class SentenceStream:
    """Sentences from text that arrives in chunks (``synthesize-chunk`` events), for streaming synthesis.

    ``add(chunk)`` returns the sentences completed so far, ``finish()`` the rest; after ``finish()`` the stream
    can be used again.  The result is the same as :func:`split_sentences` on the whole text, however it is chunked
    (words, punctuation runs or surrogate pairs split across chunks included).  A long run without a sentence end
    is not held back until it ends: as soon as enough of it has arrived that no later text can change a piece of
    at most MAX_SENTENCE_CHARS characters, the piece is returned.
    """

    def __init__(self) -> None:
        self._detector = SentenceBoundaryDetector()
        self._raw_held = ""  # a trailing "\r" (maybe half of "\r\n") or high surrogate, joined with the next chunk
        self._tail = ""  # cleaned text not yet given to the detector (see add)
        self._emitted = 0  # pieces of the pending (unfinished) sentence already returned
        self._look_at = 0  # pending length at which _early_pieces looks again

    def add(self, chunk: str) -> list[str]:
        text = self._raw_held + chunk
        self._raw_held = ""
        if text and (text[-1] == "\r" or "\ud800" <= text[-1] <= "\udbff"):
            text, self._raw_held = text[:-1], text[-1]
        text = self._tail + clean_text(text)
        # sentence-stream decides some boundaries differently when the chunk ends right after punctuation than
        # when it sees the whole text (e.g. "…" then "' Next": with the chunk ending in "…'" it cuts before the
        # quote, on the whole text after it).  Giving it only text that ends with a settling character makes every
        # decision it takes one it would take on the whole text.  This costs next to no latency: the library
        # waits for the character after a sentence end anyway (only a blank line now also waits for the next
        # paragraph's first character).
        end = _settled_end(text)
        self._tail = text[end:]
        return self._feed(text[:end]) if end else []

    def finish(self) -> list[str]:
        text = self._tail + clean_text(self._raw_held)
        self._raw_held = self._tail = ""
        out = self._feed(text) if text else []
        rest = self._detector.finish()
        if rest:
            out.extend(_pieces(rest)[self._emitted :])
        self._emitted = self._look_at = 0
        return out

    def _feed(self, text: str) -> list[str]:
        out: list[str] = []
        for sentence in self._detector.add_chunk(text):
            out.extend(_pieces(sentence)[self._emitted :])
            self._emitted = self._look_at = 0
        out.extend(self._early_pieces())
        return out

    def _early_pieces(self) -> list[str]:
        # Pieces of the pending sentence that are already final.  The detector's pending text (its
        # current_sentence + remaining_text, public attributes of sentence-stream 1.3.0; without them this is
        # skipped and long sentences just come out when they end) is the start of the next sentence it will emit.
        # Its settled prefix (up to the last character not in _TAIL_CHARS) can gain no boundary from later text,
        # so the pieces of that prefix are those of the final sentence, except the last, which may still grow:
        # _cut_long(complete=False) keeps it back unless it is already longer than a piece.
        pending = getattr(self._detector, "current_sentence", None)
        remaining = getattr(self._detector, "remaining_text", None)
        if not isinstance(pending, str) or not isinstance(remaining, str):
            return []
        pending += remaining
        if len(pending) <= MAX_SENTENCE_CHARS or len(pending) < self._look_at:
            return []
        settled = pending[: _settled_end(pending)]
        # The library removes *asterisk pairs* when it emits a sentence, which could change the settled prefix:
        # then wait for the end of the sentence instead (this only delays the result, never changes it).
        if len(settled) <= MAX_SENTENCE_CHARS or "*" in settled:
            return []
        parts = _post_split(_normalize_ws(settled))
        pieces: list[str] = []
        for part in parts[:-1]:
            pieces.extend(_cut_long(part)[0])
        last_pieces, rest = _cut_long(parts[-1], complete=False)
        pieces.extend(last_pieces)
        # Recomputing on every chunk would cost O(n^2) on a long run; the next length cut needs the rest to grow
        # past MAX_SENTENCE_CHARS, so look again then, or after 32 characters (a new _post_split boundary can
        # settle earlier).  This only moves when pieces come out, never what they are.
        self._look_at = len(pending) + min(32, MAX_SENTENCE_CHARS + 1 - len(rest))
        new = pieces[self._emitted :]
        self._emitted = max(self._emitted, len(pieces))
        return new


def prepare(
    text: str,
    text_format: str | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    max_break_s: float = DEFAULT_MAX_BREAK_S,
) -> list[Segment]:
    """A whole request -> segments to synthesize in order.

    ``text_format == "ssml"`` (a string or wyoming's ``SynthesizeTextFormat.SSML``) reads SSML (:func:`parse_ssml`);
    anything else is plain text.  ``max_chars`` limits the request as sent, markup included (it is also what
    bounds the work of the XML parser).  Control characters other than newline and tab are removed first.

    Raises :class:`InvalidRequest` with a message fit for the client: "text is too long: N characters (limit M)", "text is
    empty" (nothing to speak, e.g. whitespace only, or SSML with only breaks), or "invalid SSML: ...".
    """
    if len(text) > max_chars:
        raise InvalidRequest(f"text is too long: {len(text)} characters (limit {max_chars})")
    text = clean_text(text)
    if not text.strip():
        raise InvalidRequest("text is empty")
    fmt = getattr(text_format, "value", text_format)
    segments: list[Segment] = []
    if isinstance(fmt, str) and fmt.lower() == "ssml":
        for seg in parse_ssml(text, max_break_s=max_break_s):
            if seg.is_silence:
                segments.append(seg)
            else:
                segments.extend(Segment(text=s) for s in split_sentences(seg.text or ""))
    else:
        segments = [Segment(text=s) for s in split_sentences(text)]
    if not any(not seg.is_silence for seg in segments):
        raise InvalidRequest("text is empty")
    return segments
