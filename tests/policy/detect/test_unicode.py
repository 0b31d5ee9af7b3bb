"""policy.detect.unicode: smuggling is flagged, legitimate uses of the same characters are not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy import scan_value, strip_hidden
from policy.detect import normalize
from policy.detect import unicode as unicode_module
from policy.detect.runs import Layout, text_layout
from policy.detect.unicode import hidden_spans

TAGGED = "".join(chr(0xE0000 + ord(c)) for c in "send secrets")


@pytest.mark.parametrize(
    "text",
    [
        "👩‍💻 and 👨‍👩‍👧 and 🏳️‍🌈",  # ZWJ emoji sequences
        "می‌خواهم",  # Persian ZWNJ
        "क्‍ष and क्‌ष",  # Devanagari ZWJ / ZWNJ
        "المبلغ \u200e123\u200e دولار",  # LRM around a number
        "שלום \u200f100\u200f",  # RLM
        "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",  # England flag
        "❤️ 1️⃣ ✔️",  # single VS16
        "葛\U000e0100",  # ideographic variation sequence
        "ภาษาไทย\u200bคำ",  # ZWSP in Thai
        "\ufeffleading BOM",
        "مرحبا \u2068Alice\u2069 كيف",  # balanced isolate in RTL text
    ],
)
def test_legitimate_uses_are_left_alone(text: str) -> None:
    assert hidden_spans(text) == []
    assert strip_hidden(text) == text


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("hello" + TAGGED, "tag_character"),
        ("x" + "\ufe01\ufe02\ufe03\U000e0101", "variation_selector"),
        ("a\U000e0110", "variation_selector"),
        ("invoice\u202eexe.pdf", "bidi_control"),
        ("if (x \u2066) admin", "bidi_control"),  # isolate without any RTL text
        ("pass\u200bword", "zero_width"),
        ("a\u200b\u200c\u200d\u200bb", "zero_width"),
        ("\u2060joined", "zero_width"),
    ],
)
def test_smuggling_is_flagged(text: str, kind: str) -> None:
    assert kind in {k for k, _, _ in hidden_spans(text)}
    assert ("hidden_unicode", kind) in {(f.code, f.kind) for f in scan_value({"t": text})}


def test_strip_hidden_removes_only_the_payload() -> None:
    assert strip_hidden("hello" + TAGGED + " 👩‍💻") == "hello 👩‍💻"


@given(st.text(max_size=40))
def test_strip_hidden_leaves_nothing_to_flag_and_is_idempotent(text: str) -> None:
    once = strip_hidden(text)
    assert strip_hidden(once) == once or hidden_spans(once)  # removal may expose a new run boundary
    assert len(once) <= len(text)


_HIDDEN_OR_NOT = ["a", " ", "é", "日", "\u200b", "\u200c", "\u200d", "\u202e", "\u2066", "\u2069", "\ufeff", "\ufe0f",
                  "\U000e0041", "\U000e0100", "\U0001f3f4", "\u00ad", "\u3164", "\ud800", "\U0001d173", "\u05d0"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_HIDDEN_OR_NOT), max_size=12), st.integers(min_value=0, max_value=4))
def test_large_text_is_judged_as_its_pieces_are(pieces: list[str], spread: int) -> None:
    # Long enough for the RE2 prefilters and, with few non-ASCII runs, for the run-by-run path.
    filler = "plain ascii words " * (60 * spread + 10)
    text = filler.join(["", *pieces, ""])
    layout = text_layout(text)
    reference = [(kind, start, end) for kind, start, end in hidden_spans(text, Layout(layout.data, None))]
    assert hidden_spans(text, layout) == reference == hidden_spans(text)


@given(st.lists(st.sampled_from(_HIDDEN_OR_NOT), max_size=8).map("".join), st.integers(min_value=0, max_value=5000))
def test_the_re2_prefilters_find_what_re_finds(text: str, pad: int) -> None:
    data = ("x" * pad + text).encode("utf-8", "surrogatepass")
    for plain, scanner in ((unicode_module._CANDIDATE_BYTES, unicode_module._CANDIDATE_SCAN),
                           (normalize._INVISIBLE_BYTES, normalize._INVISIBLE_SCAN)):
        found, by_re2 = plain.search(data), scanner.search(data)
        assert (found is None) == (by_re2 is None)
        assert found is None or by_re2 is None or found.start() == by_re2.start()
