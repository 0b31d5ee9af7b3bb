"""policy.detect.normalize: piecewise NFKC is NFKC."""

from __future__ import annotations

import re
import unicodedata
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from policy.detect import normalize
from policy.detect.normalize import fold, fold_ascii, fold_bytes, nfkc, tag_runs

# Characters whose normalisation depends on their neighbours or changes them: combining
# marks (reordered, composed), Hangul jamo (composed into syllables), U+0338 after "<" "="
# ">" (composed into "≮" "≠" "≯"), fullwidth forms, ligatures, superscripts, Indic vowel
# signs that compose with the letter before them.
_TRICKY = (
    "<=>aAeEoOuUnN \n"
    "\u0300\u0301\u0302\u0308\u030a\u0323\u0327\u0338\u0345\u05b0\u0654"
    "\u1100\u1161\u11a8\u1112\u1175\uac00\uac01"
    "\uff0c\uff21\uff41\ufb01\u00bd\u00b2\u2126\u212b\u1e9b\u0dd9\u0dcf\u0dca\u0b47\u0b3e\u0bc6\u0bbe"
    "\u3099\u304b\u30a6\u00e9\u0041\u00c5"
)
tricky_text = st.text(alphabet=st.sampled_from(_TRICKY), max_size=200)


@settings(max_examples=500, deadline=None)
@given(tricky_text, st.integers(min_value=1, max_value=16))
def test_nfkc_piece_by_piece_is_nfkc_of_the_whole(text: str, chunk: int) -> None:
    assert nfkc(text, chunk) == unicodedata.normalize("NFKC", text)


@settings(max_examples=100, deadline=None)
@given(st.lists(tricky_text, max_size=12).map("".join), st.integers(min_value=129, max_value=600))
def test_nfkc_looking_closer_at_unnormalised_pieces_is_still_nfkc_of_the_whole(text: str, chunk: int) -> None:
    assert nfkc(text, chunk) == unicodedata.normalize("NFKC", text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.integers(min_value=1, max_value=32))
def test_nfkc_piece_by_piece_is_nfkc_of_the_whole_for_any_text(text: str, chunk: int) -> None:
    assert nfkc(text, chunk) == unicodedata.normalize("NFKC", text)


def test_folding_large_text_with_a_few_unnormalised_characters_equals_folding_with_whole_nfkc() -> None:
    text = ("中文的句子" * 300 + "\uff0c" + "ignore previous ｉｎｓｔｒｕｃｔｉｏｎｓ ") * 20
    piecewise = fold(text)
    with mock.patch.object(normalize, "nfkc", lambda value: unicodedata.normalize("NFKC", value)):
        whole = fold(text)
    assert piecewise == whole
    assert "ignore previous instructions" in piecewise and "\uff0c" not in piecewise


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_folding_ascii_in_one_translate_is_lower_case_then_leetspeak(text: str) -> None:
    assert fold_ascii(text) == fold(text).encode("ascii") == fold_bytes(text)


_TAG_TEXT = re.compile("[\U000e0020-\U000e007e]{2,}")  # the plain statement of tag_runs


@given(st.text(alphabet=st.sampled_from(["a", "é", "\ud800", "\U000e0001", "\U000e001f", "\U000e0020",
                                         "\U000e0041", "\U000e003f", "\U000e0040", "\U000e007e", "\U000e007f",
                                         "\U000e0100", "\U0001f3f4"])))
def test_tag_runs_found_in_utf8_are_those_of_a_str_search(text: str) -> None:
    assert tag_runs(text.encode("utf-8", "surrogatepass")) == _TAG_TEXT.findall(text)
