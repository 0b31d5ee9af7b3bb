"""policy.encodings: decoded views and the map from a view's offsets back to the original."""

from __future__ import annotations

import json
from urllib.parse import quote, quote_plus

from hypothesis import given
from hypothesis import strategies as st

from policy.encodings import MAX_VIEWS, decoded_views, may_be_encoded

ENCODE = {
    "json": lambda s: json.dumps(s)[1:-1],
    "json_twice": lambda s: json.dumps(json.dumps(s))[1:-1],
    "url": lambda s: quote(s, safe=""),
    "form": lambda s: quote_plus(s, safe=""),
}

# How each encoder writes the markers \x01 and \x02 inside a longer text.
MARKERS = {
    "json": ("\\u0001", "\\u0002"),
    "json_twice": ("\\\\u0001", "\\\\u0002"),
    "url": ("%01", "%02"),
    "form": ("%01", "%02"),
}


def test_plain_text_has_no_views() -> None:
    assert not may_be_encoded("hello world")
    assert decoded_views("hello world") == []


def test_a_double_escaped_newline_decodes_to_one_character_in_one_layer() -> None:
    (view,) = decoded_views("a\\\\nb")
    assert view.text == "a\nb"
    assert view.original_span(1, 2) == (1, 4)  # the newline came from all three characters
    assert view.original_span(2, 3) == (4, 5)


def test_percent_encoding_decodes_layer_by_layer() -> None:
    texts = [view.text for view in decoded_views("x%250Ay")]
    assert "x%0Ay" in texts and "x\ny" in texts


@given(
    secret=st.text(alphabet="ABCdef0123-_+/=", min_size=8, max_size=40),
    before=st.text(alphabet="abc \n\"'", max_size=10),
    after=st.text(alphabet="abc \n\"'", max_size=10),
    encoding=st.sampled_from(sorted(ENCODE)),
)
def test_a_decoded_substring_maps_back_to_exactly_its_encoded_span(
    secret: str, before: str, after: str, encoding: str
) -> None:
    encode = ENCODE[encoding]
    marked = f"{before}\x01{secret}\x02{after}"  # markers that every encoder escapes
    original = encode(marked)
    opening, closing = MARKERS[encoding]
    start_enc = original.index(opening) + len(opening)
    end_enc = original.index(closing)
    views = [view for view in decoded_views(original) if "\x01" + secret + "\x02" in view.text]
    assert views, "some view decodes the whole text"
    view = views[-1]
    start = view.text.index("\x01" + secret) + 1
    assert view.original_span(start, start + len(secret)) == (start_enc, end_enc)


def test_views_are_bounded() -> None:
    hostile = "%25" * 50 + "\\\\" * 50 + "+" * 50
    assert len(decoded_views(hostile)) <= MAX_VIEWS
