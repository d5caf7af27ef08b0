"""Parsing runs in linear time and gives exactly what the rule's regular expressions give.

The regular expressions below are the rules as written (docs/medix_r1.md); applied with ``re`` they
backtrack quadratically on long whitespace runs or many unclosed tags, so the library implements
them differently. A seeded fuzz checks both give the same result; the pathological inputs must
parse in milliseconds.
"""
import random
import re
import time

import pytest

from medix_r1.rewards import parse_response
from medix_r1.rewards.parsing import _block, format_ok, normalize_response

SPEC_OFFICIAL = re.compile(r"\s*([</>])\s*")
SPEC_TAG = re.compile(r"\s*<\s*(/?)\s*([A-Za-z_][A-Za-z0-9_]*)\s*>\s*")
SPEC_FORMAT = re.compile(r"<thinking>.*?</thinking>\s*<answer>.*?</answer>", re.DOTALL)
SPEC_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
SPEC_THINKING = re.compile(r"<thinking>(.*?)</thinking>", re.DOTALL)
PIECES = ["<", ">", "/", " ", "  ", "\n", "\t", "\x1c", "\xa0", "\u2028", "\u3000", "a", "b1", "_", "x", ".",
          "<thinking>", "</thinking>", "<answer>", "</answer>", "< thinking >", "</ answer>", "< / answer >",
          "<OTHER>", "<X_RAY>", "< 4", "1 / 2"]


def test_fuzz_equals_the_spec_regexes():
    rng = random.Random(1234)
    for _ in range(6000):
        s = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 14)))
        assert normalize_response(s, "official") == SPEC_OFFICIAL.sub(r"\1", s), repr(s)
        assert normalize_response(s, "strict") == SPEC_TAG.sub(r"<\1\2>", s), repr(s)
        for t in (s, normalize_response(s, "official"), normalize_response(s, "strict")):
            assert format_ok(t) is (SPEC_FORMAT.fullmatch(t) is not None), repr(t)
            m = SPEC_ANSWER.search(t)
            assert _block(t, "<answer>", "</answer>") == (m.group(1) if m else None), repr(t)
            m = SPEC_THINKING.search(t)
            assert _block(t, "<thinking>", "</thinking>") == (m.group(1) if m else None), repr(t)


@pytest.mark.parametrize("text", [
    " " * 20000 + "x",
    "\n \t" * 6667,
    "<thinking>" * 2000,
    "<thinking>" + "</thinking>" * 1800,
    "<thinking>a" + "</thinking> <answer>" * 1000 + "tail",
    "<thinking>x</thinking><answer>" + "</answer>" * 2200 + "t",
    " " * 10000 + "< x" + " " * 10000,
    ("< / " + " " * 200) * 100,
    "< " * 10000,
], ids=["spaces", "mixed-ws", "opens", "closes", "think-answer", "answers", "lt-in-spaces", "lt-slash", "lt"])
@pytest.mark.parametrize("parity", ["strict", "official"])
def test_pathological_responses_parse_fast(text, parity):
    t0 = time.perf_counter()
    parse_response(text, parity)
    assert time.perf_counter() - t0 < 0.1  # the spec regexes take 0.3-2.6 s on some of these
