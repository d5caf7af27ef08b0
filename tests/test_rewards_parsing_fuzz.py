"""Property-based tests of the reward parser (issue 17): random strings, unicode and tag soup.

Each property compares the linear-time parser with the plain regular expression it replaces (the
official code's), or states what must hold for any input. Bounded: 200 examples each, a few
seconds in all."""
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from medix_r1.rewards.parsing import (
    MODALITY_TAGS,
    PARITIES,
    clean_answer,
    is_invalid_answer,
    normalize_response,
    parse_response,
    parse_solution,
)

FUZZ = settings(max_examples=200, deadline=500, derandomize=True)
PIECES = ["<thinking>", "</thinking>", "<answer>", "</answer>", "< answer >", "</ thinking>", "<OTHER>", "<X_RAY>",
          "<", ">", "/", " ", "\n", "\t", "\u00a0", "\u2003", ".", "..", ":", "?", "__", "a", "Yes", "é", "中",
          "\u200b", "\U0001f600", "\x00", "<a1>", "< / b >"]
TAG_SOUP = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=5)), max_size=40).map("".join)
ANY_TEXT = st.one_of(st.text(max_size=200), TAG_SOUP)


@FUZZ
@given(ANY_TEXT)
def test_official_normalisation_is_the_official_regex(text):
    assert normalize_response(text, "official") == re.sub(r"\s*([</>])\s*", r"\1", text)


@FUZZ
@given(ANY_TEXT)
def test_strict_normalisation_is_the_tag_regex(text):
    want = re.sub(r"\s*<\s*(/?)\s*([A-Za-z_][A-Za-z0-9_]*)\s*>\s*", r"<\1\2>", text)
    assert normalize_response(text, "strict") == want


@FUZZ
@given(ANY_TEXT, st.sampled_from(PARITIES))
def test_format_rule_is_the_official_full_match(text, parity):
    parsed = parse_response(text, parity)
    start = parsed.normalized.find("<thinking>")
    want = start >= 0 and re.fullmatch(r"<thinking>.*?</thinking>\s*<answer>.*?</answer>",
                                       parsed.normalized[start:].strip(), re.DOTALL) is not None
    assert parsed.format_ok is want


@FUZZ
@given(ANY_TEXT, st.sampled_from(PARITIES))
def test_any_text_parses_to_strings_that_are_already_clean(text, parity):
    parsed = parse_response(text, parity)
    assert isinstance(parsed.answer, str) and isinstance(parsed.modality_tag, str)
    if parity == "strict":  # (official strips before the dots only: "0 ." gives "0 ", as its code does)
        assert clean_answer(parsed.answer, parity) == parsed.answer
        assert parsed.answer == parsed.answer.strip() and not parsed.answer.startswith(".")
    assert isinstance(is_invalid_answer(parsed.answer), bool)
    m = re.search(r"<answer>(.*?)</answer>", parsed.normalized, re.DOTALL)
    if m:  # the answer is the first answer block's content, cleaned
        assert parsed.answer == clean_answer(m.group(1), parity)


@FUZZ
@given(st.one_of(ANY_TEXT, st.sampled_from(MODALITY_TAGS).flatmap(lambda t: ANY_TEXT.map(lambda s: t + s))))
def test_a_solution_parses_to_a_known_tag_or_a_value_error(text):
    try:
        tag, answer = parse_solution(text)
    except ValueError as e:
        assert "modality tag" in str(e)
        return
    assert tag.upper() in MODALITY_TAGS and answer == clean_answer(answer)  # strict by default
