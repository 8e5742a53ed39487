"""Tests for wyoming_qwen3tts.text: SSML, sentence splitting (whole and streamed), long-sentence cutting, limits."""

from __future__ import annotations

import random

import pytest

from wyoming_qwen3tts.text import (
    MAX_SENTENCE_CHARS,
    Segment,
    SentenceStream,
    clean_text,
    parse_ssml,
    prepare,
    split_sentences,
)


def texts(segments: list[Segment]) -> list[str]:
    return [s.text for s in segments if not s.is_silence]


def stream(chunks: list[str]) -> list[str]:
    s = SentenceStream()
    out: list[str] = []
    for chunk in chunks:
        out += s.add(chunk)
    return out + s.finish()


def random_chunks(rng: random.Random, text: str) -> list[str]:
    out, i = [], 0
    while i < len(text):
        n = rng.choice([1, 1, 2, 3, 4, 7, 12, 30, 100])
        out.append(text[i : i + n])
        i += n
    return out


# ---------------------------------------------------------------------------------------------------------------
# Segment


def test_segment_is_text_or_silence():
    assert not Segment(text="Hi.").is_silence
    assert Segment(silence_s=0.5).is_silence
    with pytest.raises(ValueError):
        Segment()
    with pytest.raises(ValueError):
        Segment(text="a", silence_s=1.0)


# ---------------------------------------------------------------------------------------------------------------
# SSML


@pytest.mark.parametrize(
    "attrs, seconds",
    [
        ('time="500ms"', 0.5),
        ('time="1.5s"', 1.5),
        ('time="2S"', 2.0),
        ('time=" 250 ms "', 0.25),
        ('time=".75s"', 0.75),
        ('strength="x-weak"', 0.1),
        ('strength="weak"', 0.25),
        ('strength="medium"', 0.5),
        ('strength="strong"', 0.75),
        ('strength="x-strong"', 1.0),
        ("", 0.5),  # bare <break/> = medium
        ('time="300ms" strength="x-strong"', 0.3),  # time wins
        ('time="soon"', 0.5),  # unreadable time: falls back to strength / medium
        ('time="-1s" strength="weak"', 0.25),
        ('strength="huge"', 0.5),
    ],
)
def test_break_durations(attrs, seconds):
    segs = parse_ssml(f"<speak>Hello<break {attrs}/>world</speak>")
    assert segs == [Segment(text="Hello"), Segment(silence_s=pytest.approx(seconds)), Segment(text="world")]


def test_break_clamped_and_adjacent_breaks_merged():
    assert parse_ssml('<speak>a<break time="30s"/>b</speak>')[1] == Segment(silence_s=10.0)
    assert parse_ssml('<speak>a<break time="30s"/>b</speak>', max_break_s=2.0)[1] == Segment(silence_s=2.0)
    segs = parse_ssml('<speak>a <break time="1s"/> <break strength="strong"/>b</speak>')
    assert segs == [Segment(text="a"), Segment(silence_s=1.75), Segment(text="b")]
    # many adjacent breaks cannot add up past the limit
    segs = parse_ssml("<speak>a" + '<break time="9s"/>' * 50 + "b</speak>")
    assert segs == [Segment(text="a"), Segment(silence_s=10.0), Segment(text="b")]
    with pytest.raises(ValueError):
        parse_ssml("<speak/>", max_break_s=-1)


def test_zero_break_is_no_pause_and_no_split():
    assert parse_ssml('<speak>Good<break strength="none"/> morning <break time="0ms"/>all</speak>') == [
        Segment(text="Good morning all")
    ]


def test_leading_and_trailing_breaks_kept():
    assert parse_ssml('<speak><break time="1s"/>Hi<break time="2s"/></speak>') == [
        Segment(silence_s=1.0),
        Segment(text="Hi"),
        Segment(silence_s=2.0),
    ]


def test_markup_dropped_text_spoken():
    ssml = (
        '<speak><prosody rate="slow" pitch="+2st">The <emphasis level="strong">big</emphasis> '
        '<say-as interpret-as="cardinal">42</say-as> <phoneme alphabet="ipa" ph="təˈmeɪtoʊ">tomato</phoneme> '
        '<lang xml:lang="fr-FR">bonjour</lang> <made-up foo="1">thing</made-up>'
        '<mark name="m1"/> ends</prosody></speak>'
    )
    assert texts(parse_ssml(ssml)) == ["The big 42 tomato bonjour thing ends"]


def test_sub_alias_and_unspoken_elements():
    ssml = (
        '<speak>Visit the <sub alias="World Wide Web">WWW</sub> today. <sub>plain</sub> '
        '<audio src="chime.wav"><desc>a chime</desc>no audio here</audio></speak>'
    )
    assert texts(parse_ssml(ssml)) == ["Visit the World Wide Web today. plain no audio here"]


def test_nested_paragraphs_and_sentences_are_boundaries():
    ssml = (
        "<speak>Intro<p><s>First sentence without stop</s><s>Second <emphasis>one</emphasis></s></p>"
        "<p>Third\n\n   spread   over\tlines</p>outro</speak>"
    )
    assert texts(parse_ssml(ssml)) == [
        "Intro",
        "First sentence without stop",
        "Second one",
        "Third spread over lines",
        "outro",
    ]
    # prepare then splits each text run into sentences, never across a <s>/<p> boundary
    assert texts(prepare("<speak><s>a b</s><s>c</s>First one. Second one.</speak>", "ssml", 1000)) == [
        "a b",
        "c",
        "First one.",
        "Second one.",
    ]


def test_namespace_xml_declaration_entities_comments():
    ssml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<speak version="1.1" xmlns="http://www.w3.org/2001/10/synthesis" xml:lang="en-US">'
        "<!-- not spoken -->Tom &amp; Jerry &lt;3 &#x1F600;<break time='1s'/>bye<?pi not spoken?></speak>"
    )
    assert parse_ssml(ssml) == [Segment(text="Tom & Jerry <3 \U0001f600"), Segment(silence_s=1.0), Segment(text="bye")]


def test_ssml_control_characters_and_bom():
    # control characters are not legal XML; they are removed as in plain text instead of failing the request
    assert texts(parse_ssml("\ufeff<speak>a\x00b\x07 c</speak>")) == ["ab c"]
    assert texts(parse_ssml('\ufeff<?xml version="1.0"?><speak>x</speak>')) == ["x"]


def test_ssml_without_speak_root():
    assert parse_ssml('Hello <break time="200ms"/> <emphasis>world</emphasis>') == [
        Segment(text="Hello"),
        Segment(silence_s=0.2),
        Segment(text="world"),
    ]
    assert texts(parse_ssml("just text")) == ["just text"]
    assert texts(parse_ssml("<speak>one</speak> two")) == ["one two"]


@pytest.mark.parametrize(
    "ssml",
    [
        "<speak>unclosed",
        "<speak><p>mismatched</s></speak>",
        "<speak>a < b</speak>",
        "<speak>R&D</speak>",
        "<speak>&nbsp;</speak>",  # only XML's five entities exist
        '<speak><break time="1s"></speak>',
        "<speak attr=noquotes>x</speak>",
        "<undeclared:tag>x</undeclared:tag>",
        "<speak></speak><?xml version='1.0'?>",
    ],
)
def test_malformed_xml_is_value_error(ssml):
    with pytest.raises(ValueError, match=r"^invalid SSML: .+"):
        parse_ssml(ssml)
    with pytest.raises(ValueError, match=r"^invalid SSML: "):
        prepare(ssml, "ssml", 1000)


def test_error_position_refers_to_the_input():
    with pytest.raises(ValueError, match=r"line 1, column [0-9]+\)") as e:
        parse_ssml("<speak>a <b> c</speak>")
    assert "mismatched tag" in str(e.value)
    with pytest.raises(ValueError, match=r"line 2"):
        parse_ssml("<speak>\n<oops</speak>")


@pytest.mark.parametrize(
    "ssml",
    [
        '<!DOCTYPE speak [<!ENTITY a "aaaaaaaaaa">]><speak>&a;&a;</speak>',
        '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><speak>&lol2;</speak>',
        '<?xml version="1.0"?><!DOCTYPE speak SYSTEM "file:///etc/passwd"><speak>x</speak>',
        '<!doctype speak><speak>x</speak>',
        '<speak><!ENTITY x "y">x</speak>',
    ],
)
def test_doctype_and_entities_rejected(ssml):
    with pytest.raises(ValueError, match=r"^invalid SSML: DOCTYPE and entity declarations are not allowed$"):
        parse_ssml(ssml)


def test_deep_nesting_does_not_recurse():
    depth = 5000
    ssml = "<speak>" + "<emphasis>" * depth + "deep" + "</emphasis>" * depth + "</speak>"
    assert texts(parse_ssml(ssml)) == ["deep"]


def test_empty_ssml():
    assert parse_ssml("<speak></speak>") == []
    assert parse_ssml("<speak>  \n <p> </p></speak>") == []
    for ssml in ("<speak></speak>", "<speak> <s/> </speak>", '<speak><break time="1s"/></speak>'):
        with pytest.raises(ValueError, match="^text is empty$"):
            prepare(ssml, "ssml", 1000)


def test_prepare_ssml_segments():
    segs = prepare('<speak>Hello there. How are you?<break time="750ms"/><p>Fine, thanks!</p></speak>', "ssml", 1000)
    assert segs == [
        Segment(text="Hello there."),
        Segment(text="How are you?"),
        Segment(silence_s=0.75),
        Segment(text="Fine, thanks!"),
    ]


def test_prepare_text_format_values():
    ssml = '<speak>a<break time="1s"/>b</speak>'
    assert len(prepare(ssml, "ssml", 1000)) == 3
    assert len(prepare(ssml, "SSML", 1000)) == 3
    # anything else is plain text: the markup is read out as it is
    assert prepare(ssml, None, 1000) == [Segment(text=ssml)]
    assert prepare(ssml, "text", 1000) == [Segment(text=ssml)]
    tts = pytest.importorskip("wyoming.tts")
    if hasattr(tts, "SynthesizeTextFormat"):
        assert len(prepare(ssml, tts.SynthesizeTextFormat.SSML, 1000)) == 3


# ---------------------------------------------------------------------------------------------------------------
# plain text sentences


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "Hello world. How are you? I am fine! Dr. Smith is here.",
            ["Hello world.", "How are you?", "I am fine!", "Dr. Smith is here."],
        ),
        (
            "Das Wetter ist heute schön. Möchtest du spazieren gehen? Ja, gerne! Über die Brücke.",
            ["Das Wetter ist heute schön.", "Möchtest du spazieren gehen?", "Ja, gerne!", "Über die Brücke."],
        ),
        ("今天天气很好。我们去公园吧！你觉得怎么样？好……走吧。", ["今天天气很好。", "我们去公园吧！", "你觉得怎么样？", "好……", "走吧。"]),
        ("こんにちは。お元気ですか？はい、元気です！", ["こんにちは。", "お元気ですか？", "はい、元気です！"]),
        ("「行こう。」と彼は言った。そうだね。", ["「行こう。」", "と彼は言った。", "そうだね。"]),
        ("안녕하세요. 반갑습니다. 날씨가 좋네요!", ["안녕하세요.", "반갑습니다.", "날씨가 좋네요!"]),
        ("Привет. Как дела? Хорошо.", ["Привет.", "Как дела?", "Хорошо."]),
        # rules added on top of sentence-stream: an opening mark after a sentence end ...
        ("Hola. ¿Cómo estás? ¡Muy bien! Gracias.", ["Hola.", "¿Cómo estás?", "¡Muy bien!", "Gracias."]),
        ('He left. "Why?" she asked.', ["He left.", '"Why?" she asked.']),
        # ... but not after an abbreviation
        ("Sr. «García» llegó. Vale.", ["Sr. «García» llegó.", "Vale."]),
        # ... and half-width punctuation between CJK characters
        ("你好!我很好?谢谢.再见", ["你好!", "我很好?", "谢谢.", "再见"]),
        # no sentence end: one sentence; numbers with dots are not sentence ends
        ("The value is 3.14 today", ["The value is 3.14 today"]),
    ],
)
def test_split_sentences_languages(text, expected):
    assert split_sentences(text) == expected
    assert stream(list(text)) == expected


def test_inherited_sentence_stream_heuristics():
    # Pinned so that a sentence-stream upgrade that changes them is noticed.  A capital plus at most two letters
    # and a dot reads as an abbreviation ("Dr.", but also "Uhr.", "One."), and a sentence end needs a capital after
    # it: both keep text together, which costs latency, never words.
    assert split_sentences("Es ist zehn Uhr. Wir gehen.") == ["Es ist zehn Uhr. Wir gehen."]
    assert split_sentences("It ends here. and goes on.") == ["It ends here. and goes on."]


def test_newlines_inside_a_sentence_become_spaces_blank_lines_split():
    text = "First line\nsecond line of the same sentence.\n\nA new paragraph\nwithout a stop\n\n\nLast"
    assert split_sentences(text) == [
        "First line second line of the same sentence.",
        "A new paragraph without a stop",
        "Last",
    ]


def test_split_sentences_empty_and_whitespace():
    assert split_sentences("") == []
    assert split_sentences(" \n\t ") == []
    assert stream(["", " ", "\n"]) == []


def test_markdown_asterisks_removed():
    # sentence-stream drops markdown emphasis asterisks, which a TTS model would otherwise read or stumble on
    assert split_sentences("This is **important**. Really *good*.") == ["This is important.", "Really good."]


# ---------------------------------------------------------------------------------------------------------------
# streaming == whole text

STREAM_TEXT = (
    "Hello there! This is a test of the streaming splitter. Dr. Smith said: \"It works.\" Does it? "
    "Yes.\n\nNew paragraph\nacross lines. Die Straße ist naß. Größe: 3.5 m. "
    "今天天气很好。我们去公园吧！你觉得怎么样？こんにちは。元気ですか？"
    "Hola. ¿Qué tal? 1. First item 2. Second item. Emoji 👍🏽 and e\u0301 stay. "
    + " ".join(["word"] * 150)
    + " end. "
    + "长" * 900
    + "。 Done… really? Ok."
)


@pytest.mark.parametrize("seed", range(12))
def test_stream_chunking_gives_same_sentences(seed):
    rng = random.Random(seed)
    whole = split_sentences(STREAM_TEXT)
    assert stream(random_chunks(rng, STREAM_TEXT)) == whole


def test_stream_one_character_at_a_time_and_one_chunk():
    whole = split_sentences(STREAM_TEXT)
    assert stream(list(STREAM_TEXT)) == whole
    assert stream([STREAM_TEXT]) == whole
    assert "".join(whole).count("长") == 900


_TOKENS = [
    "word", "Word", "Über", "Straße", "Dr.", "Mr.", "z.B.", "e.g.", "3.14", "12.", "1)", ".", "!", "?", "?!", "…",
    "...", "。", "！", "？", "……", "你好", "天气", "こんにちは", "안녕", "Привет", "¿Qué", "¡Sí", "«", "»", '"', "'",
    "(", ")", "「", "」", "”", ",", "，", "、", ";", ":", "*", "**bold**", "\n", "\n\n", "\r\n", "\r", "\t", "\x00",
    "\x07", "\u00a0", "😀", "👍🏽", "e\u0301", "-", "2024", "x" * 40, "长" * 60, " ".join(["run"] * 60),
]  # fmt: skip


@pytest.mark.parametrize("seed", range(40))
def test_stream_random_texts_property(seed):
    # random mixtures of everything the splitter reacts to, cut into random chunks (mid-word, mid-punctuation,
    # between "\r" and "\n"): the stream must give exactly the sentences of the whole text
    rng = random.Random(1000 + seed)
    parts = []
    for _ in range(rng.choice([10, 60, 250])):
        parts.append(rng.choice(_TOKENS))
        if rng.random() < 0.6:
            parts.append(" ")
    text = "".join(parts)
    whole = split_sentences(text)
    assert all(0 < len(s) <= MAX_SENTENCE_CHARS and s == s.strip() for s in whole)
    for _ in range(3):
        assert stream(random_chunks(rng, text)) == whole


def test_stream_surrogate_halves_across_chunks():
    # JSON-decoded chunks can split an emoji into its UTF-16 surrogates
    assert stream(["Smile \ud83d", "\ude00 please."]) == ["Smile \U0001f600 please."]
    assert stream(["Lone \ud83d", " half."]) == ["Lone half."]
    assert split_sentences("Lone \ude00 low.") == ["Lone low."]


def test_stream_is_reusable_after_finish():
    s = SentenceStream()
    assert s.add("First. Second") == ["First."]
    assert s.finish() == ["Second"]
    assert s.add("Third. Fourth") == ["Third."]
    assert s.finish() == ["Fourth"]


def test_stream_emits_sentences_as_they_complete():
    s = SentenceStream()
    assert s.add("Hello wor") == []
    assert s.add("ld. How") == ["Hello world."]
    assert s.add(" are you?") == []  # the library waits for what follows a sentence end
    assert s.add(" Fine") == ["How are you?"]
    assert s.finish() == ["Fine"]


# ---------------------------------------------------------------------------------------------------------------
# long sentences


def test_long_unpunctuated_text_cut_at_spaces():
    rng = random.Random(7)
    words = [rng.choice(["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]) for _ in range(400)]
    text = " ".join(words)  # ~2500 characters, no punctuation
    pieces = split_sentences(text)
    assert len(pieces) > 1
    assert all(len(p) <= MAX_SENTENCE_CHARS for p in pieces)
    assert all(len(p) > MAX_SENTENCE_CHARS - 20 for p in pieces[:-1])  # cut late, not early
    # cut only between words: the pieces' words are exactly the text's words
    assert [w for p in pieces for w in p.split(" ")] == words


def test_long_text_prefers_clause_punctuation():
    clause = "this clause goes on for a while, "
    text = clause * 40
    pieces = split_sentences(text)
    assert all(len(p) <= MAX_SENTENCE_CHARS for p in pieces)
    assert all(p.endswith(",") for p in pieces[:-1])


def test_long_text_without_spaces_cut_anywhere():
    text = "我们今天去公园玩然后回家吃饭" * 150  # 2100 characters, no punctuation, no spaces
    pieces = split_sentences(text)
    assert all(0 < len(p) <= MAX_SENTENCE_CHARS for p in pieces)
    assert "".join(pieces) == text
    text = "我们今天去公园玩，然后回家吃饭，" * 60  # CJK commas are preferred cut points
    pieces = split_sentences(text)
    assert all(len(p) <= MAX_SENTENCE_CHARS and p.endswith("，") for p in pieces)
    assert "".join(pieces) == text


def test_hard_cut_keeps_emoji_and_combining_marks_whole():
    text = "👍🏽" * 500
    pieces = split_sentences(text)
    assert all(len(p) <= MAX_SENTENCE_CHARS and len(p) % 2 == 0 for p in pieces)
    text = "e\u0301" * 500
    assert all(p[0] == "e" for p in split_sentences(text))


def test_stream_emits_long_sentences_before_they_end():
    text = " ".join(["streaming"] * 300) + " done."
    s = SentenceStream()
    early: list[str] = []
    for i in range(0, 1000, 5):  # the first 1000 characters, in small chunks
        early += s.add(text[i : i + 5])
    assert len(early) >= 2
    rest = s.add(text[1000:]) + s.finish()
    assert early + rest == split_sentences(text)


# ---------------------------------------------------------------------------------------------------------------
# prepare: cleaning and limits


def test_control_characters_removed_emoji_kept():
    assert clean_text("a\x00b\x07c\x1bd\x7fe\x85f\tg\nh") == "abcdef\tg\nh"
    assert clean_text("x\r\ny\rz") == "x\ny\nz"
    segs = prepare("Hi\x00 there\x07!\r\nNice 😀👨‍👩‍👧 day.\x1b", None, 1000)
    assert texts(segs) == ["Hi there!", "Nice 😀👨‍👩‍👧 day."]


def test_max_chars_enforced():
    assert texts(prepare("a" * 100, None, 100)) == ["a" * 100]
    with pytest.raises(ValueError, match=r"^text is too long: 101 characters \(limit 100\)$"):
        prepare("a" * 101, None, 100)
    with pytest.raises(ValueError, match=r"^text is too long: 150 characters \(limit 100\)$"):
        prepare("<speak>" + "b" * 135 + "</speak>", "ssml", 100)  # markup counts


@pytest.mark.parametrize("text", ["", " ", "\n\t  \n", "\x00\x07", "\u00a0\u2003"])
def test_empty_or_whitespace_rejected(text):
    with pytest.raises(ValueError, match="^text is empty$"):
        prepare(text, None, 1000)


def test_prepare_plain_text():
    assert prepare("Good morning. The weather is fine.", None, 1000) == [
        Segment(text="Good morning."),
        Segment(text="The weather is fine."),
    ]
    # a long request becomes model-sized pieces
    segs = prepare("word " * 900, None, 5000)
    assert all(len(s.text) <= MAX_SENTENCE_CHARS for s in segs) and len(segs) >= 10
