"""parse_yaml's libyaml fast path gives exactly the reference path's answer (hypothesis).

The invariant: for every text and limits, ``parse_yaml`` returns the same tree (values,
types, positions) or raises the same located errors as the pure-Python reference path,
and the C-event path, whenever it answers at all, answers with the reference's tree.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policy import PolicyLoadError, yaml_safe
from policy.yaml_safe import parse_yaml

needs_libyaml = pytest.mark.skipif(yaml_safe._CParser is None, reason="PyYAML built without libyaml")

BENCH = Path(__file__).resolve().parents[2] / "bench"


def outcome(call: object, *args: object) -> tuple[str, str]:
    """("ok", repr of the tree) or ("error", the located messages); repr keeps NaN comparable."""
    try:
        return ("ok", repr(call(*args)))  # type: ignore[operator]
    except PolicyLoadError as exc:
        return ("error", repr([str(issue) for issue in exc.errors]))


def assert_same(text: str, max_depth: int = 32, max_alias_nodes: int = 10_000) -> None:
    reference = outcome(yaml_safe._parse_reference, text, "p.yaml", max_depth, max_alias_nodes)
    public = outcome(
        lambda: parse_yaml(text, "p.yaml", max_depth=max_depth, max_alias_nodes=max_alias_nodes)
    )
    assert public == reference
    if yaml_safe._CParser is not None:
        fast = yaml_safe._parse_fast(text, "p.yaml", max_depth, max_alias_nodes)
        if fast is not yaml_safe._FALLBACK:
            assert ("ok", repr(fast)) == reference


# -- generators ---------------------------------------------------------------------------

ODD_SCALARS = [
    "0x1F", "0o17", "017", "0b101", "1_000", "+12", "-0", "1e3", "1.5e-3", ".inf", "-.Inf",
    ".NaN", "~", "null", "Null", "yes", "No", "on", "OFF", "y", "true", "2001-12-14",
    "2001-12-14t21:59:43.10-05:00", "2002-13-40", "2001-12-14 21:59:43.10 +5", "1:20",
    "190:20:30", "=", "<<", "''", '""', "'it''s'", '"a\\tb\\u00e9\\x41"', '"\\q"', "é", "😀",
    "a: b", "- x", "#", "%", "@x", "`x", "!", "!!", "&", "*", "?", "|", ">", "{", "}", "[",
    "]", ",", "12345678901234567890123", "1e400", "-1e400", "0.", ".5", "._",
]
FRAGMENTS = [
    *ODD_SCALARS,
    "key", "rules", "allow_tools", " ", "  ", "    ", "\t", "\n", "\n  ", "\n- ", "\n  - ",
    ": ", ":", "- ", "? ", "&a ", "&b ", "*a", "*b", "<<: *a", "<<: [*a, *b]", "!!str ",
    "!!int ", "!!float ", "!!binary ", "!!set ", "!!omap ", "!!python/object:os.system ",
    "!custom ", "!<tag:yaml.org,2002:str> ", "%YAML 1.1\n", "%YAML 1.2\n", "%YAML 2.0\n",
    "%TAG ! tag:yaml.org,2002:\n", "---\n", "--- ", "...\n", "# note\n", " # c",
    "|\n  lit\n", "|-\n  x\n", ">+\n  fold\n\n", "{a: 1, b: [2, 3]}", "[1, [2, [3]]]",
    "\r\n", "\r", "\x85", "\u2028", "\u2029", "\ufeff", "\x00", "\x07", "\x7f", "\ud800",
    "\udc80", "\U0001f600",
]

text_docs = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)

keys = st.sampled_from(["a", "b", "rules", "id", "model", "<<", "1", "true", "x y", "é"])
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(ODD_SCALARS),
    st.dates(),
    st.datetimes(timezones=st.just(dt.UTC)),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)
    ),
    max_leaves=30,
)


@st.composite
def dumped_docs(draw: st.DrawFn) -> str:
    """Real documents in every dump style, then nastied: aliases, merges, duplicate keys."""
    text = yaml.safe_dump(
        draw(values),
        default_flow_style=draw(st.sampled_from([None, True, False])),
        allow_unicode=draw(st.booleans()),
        canonical=draw(st.booleans()),
        width=draw(st.sampled_from([20, 80, 1000])),
        explicit_start=draw(st.booleans()),
    )
    lines = text.split("\n")
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, draw(st.sampled_from(
            ["a: &a {x: 1}", "b: *a", "<<: *a", "a: 1", "a: 2", "- &a [1, 2]", "- *a", "c: !!str 3",
             "  a: 1", "  a: 1", "d: &r [*r]", "e: *missing"]
        )))
    return "\n".join(lines)


def nested(depth: int, style: str) -> str:
    if style == "flow-seq":
        return "[" * depth + "]" * depth
    if style == "flow-map":
        return "{a: " * depth + "1" + "}" * depth
    if style == "block-map":
        return "".join("  " * level + "k:\n" for level in range(depth)) + "  " * depth + "v\n"
    return "".join("  " * level + "-\n" for level in range(depth)) + "  " * depth + "v\n"


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@needs_libyaml
@SETTINGS
@given(text_docs)
@example("a: 1\na: 2\n")
@example("a: &x [1]\nb: *x\n<<: *x\n")
@example("a: !!python/object:os.system x\n")
@example("a:\r\n  b: 1\r\n")
@example("a: 1\n\x85b: 2\n")
@example("\ufeffa: 1\n")
def test_random_text_gives_the_reference_answer(text: str) -> None:
    assert_same(text)


@needs_libyaml
@SETTINGS
@given(dumped_docs(), st.integers(1, 40), st.integers(0, 60))
def test_real_documents_give_the_reference_answer(text: str, depth: int, aliases: int) -> None:
    assert_same(text)
    assert_same(text, max_depth=depth, max_alias_nodes=aliases)


@needs_libyaml
@settings(max_examples=120, deadline=None)
@given(
    st.integers(1, 45),
    st.sampled_from(["flow-seq", "flow-map", "block-map", "block-seq"]),
    st.integers(1, 40),
)
def test_deep_nesting_gives_the_reference_answer(depth: int, style: str, limit: int) -> None:
    assert_same(nested(depth, style), max_depth=limit)


@needs_libyaml
@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["surrogateescape", "latin-1", "replace"]))
def test_non_utf8_bytes_give_the_reference_answer(data: bytes, how: str) -> None:
    text = data.decode("latin-1") if how == "latin-1" else data.decode("utf-8", how)
    assert_same(text)
    assert_same("rules:\n  - id: " + text + "\n")


@needs_libyaml
def test_alias_bombs_and_huge_documents_give_the_reference_answer() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    assert_same(bomb)
    huge = "rules:\n" + "".join(
        f"  - id: r{i}\n    model: m{i}\n    allow_tools: [t{i}.*, 'x{i}']\n" for i in range(12_000)
    )
    assert len(huge) > 500_000
    assert_same(huge)
    assert_same("a: " + "x" * 900_000 + "\n")
    assert_same("a: &a [*a]\n")


@needs_libyaml
def test_the_fast_path_really_answers_for_a_bench_policy() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from bench_gateway import policy_yaml
    finally:
        sys.path.remove(str(BENCH))
    text = policy_yaml()
    fast = yaml_safe._parse_fast(text, "p.yaml", 32, 10_000)
    assert fast is not yaml_safe._FALLBACK
    assert repr(fast) == repr(yaml_safe._parse_reference(text, "p.yaml", 32, 10_000))


@needs_libyaml
def test_a_refused_document_is_refused_with_the_reference_message() -> None:
    text = "rules:\n  - a: 1\n    a: 2\n"
    assert yaml_safe._parse_fast(text, "p.yaml", 32, 10_000) is yaml_safe._FALLBACK
    with pytest.raises(PolicyLoadError) as caught:
        parse_yaml(text, "p.yaml")
    assert [str(issue) for issue in caught.value.errors] == ["p.yaml:3:5: rules[0].a: duplicate key"]
