"""Response/solution parsing, format and modality rewards, verdict parsing, the total (no models)."""
import pytest

from medix_r1.rewards import (
    MODALITY_TAGS,
    RewardConfig,
    RewardResult,
    RewardWeights,
    is_invalid_answer,
    parse_response,
    parse_solution,
    parse_verdict,
    validate_solution,
)
from medix_r1.rewards.parsing import format_reward, modality_reward


def test_sixteen_tags():
    assert len(MODALITY_TAGS) == 16 == len(set(MODALITY_TAGS))
    assert "<X_RAY>" in MODALITY_TAGS and "<SPECT>" in MODALITY_TAGS and "<OTHER>" in MODALITY_TAGS


def test_official_whitespace_removal_and_parts():
    p = parse_response("<X_RAY> <thinking> a / b </thinking>\n<answer> b </answer>", "official")
    assert p.normalized == "<X_RAY><thinking>a/b</thinking><answer>b</answer>"
    assert (p.modality_tag, p.thinking, p.answer, p.format_ok) == ("<X_RAY>", "a/b", "b", True)


def test_strict_keeps_slashes_and_comparisons_inside_text():
    p = parse_response("<OTHER> < thinking >PSA < 4 and 1 / 2</ thinking > <answer> 1 / 2 </answer>")
    assert p.thinking == "PSA < 4 and 1 / 2" and p.answer == "1 / 2" and p.format_ok
    assert parse_response("<answer> 1 / 2 </answer>", "official").answer == "1/2"


@pytest.mark.parametrize("parity", ["strict", "official"])
@pytest.mark.parametrize("response, fmt", [
    ("<OTHER><thinking>x</thinking><answer>y</answer>", 1.0),
    ("<OTHER> <thinking>x</thinking>\n\n<answer>y</answer>\n", 1.0),
    ("chatter before <thinking>x</thinking><answer>y</answer>", 1.0),   # text before: not checked
    ("<OTHER><thinking>x</thinking><answer>y</answer> trailing", 0.0),  # trailing text fails
    ("<OTHER><thinking>x</thinking>middle<answer>y</answer>", 0.0),
    ("<OTHER><answer>y</answer>", 0.0),                                 # no <thinking>
    ("<OTHER><thinking>x</thinking>", 0.0),
    ("<OTHER><thinking>multi\nline</thinking><answer>a\nb</answer>", 1.0),  # dot matches newlines
    ("", 0.0),
])
def test_format(parity, response, fmt):
    assert format_reward(parse_response(response, parity)) == fmt


@pytest.mark.parametrize("response, tag, want", [
    ("<X_RAY><thinking>x</thinking><answer>y</answer>", "<X_RAY>", 1.0),
    ("<x_ray> <thinking>x</thinking><answer>y</answer>", "<X_RAY>", 1.0),  # case-insensitive
    ("<CT_SCAN><thinking>x</thinking><answer>y</answer>", "<X_RAY>", 0.0),
    ("I think <X_RAY><thinking>x</thinking>", "<X_RAY>", 0.0),           # extra text before the tag
    ("<X_RAY><answer>y</answer>", "<X_RAY>", 0.0),                       # no <thinking>
    ("<thinking>x</thinking><answer>y</answer>", "<X_RAY>", 0.0),        # no tag
])
def test_modality(response, tag, want):
    assert modality_reward(parse_response(response, "official"), tag) == want


def test_answer_extraction():
    assert parse_response("<OTHER><thinking>t</thinking><answer>. Yes. </answer>", "official").answer == " Yes"
    assert parse_response("<OTHER><thinking>t</thinking><answer>. Yes. </answer>").answer == "Yes"
    assert parse_response("<answer>...Pneumonia...</answer><answer>second</answer>").answer == "Pneumonia"
    assert parse_response("  just text.  ").answer == "just text"  # no answer tag: the whole response
    assert parse_response("<thinking>t</thinking><answer></answer>").answer == ""


@pytest.mark.parametrize("answer, invalid", [
    ("", True), ("A", True), ("x__y", True), ("Ratio: 2", True), ("Is it?", True),
    ("No", False), ("Pneumonia", False), ("1/2", False),
])
def test_invalid_answers(answer, invalid):
    assert is_invalid_answer(answer) is invalid


def test_solution_parsing_and_validation():
    assert parse_solution("<OTHER> Yes. The study showed it.") == ("<OTHER>", "Yes. The study showed it")
    assert parse_solution("  <ct_scan>  left kidney.. ") == ("<ct_scan>", "left kidney")
    with pytest.raises(ValueError, match="sample 'pm-17'.*must start with a modality tag"):
        validate_solution("Yes, it does", "pm-17")
    with pytest.raises(ValueError, match="sample 3.*unknown modality tag '<XRAY>'"):
        validate_solution("<XRAY> fracture", 3)
    with pytest.raises(TypeError, match="sample 'a'.*must be a str"):
        validate_solution(None, "a")


@pytest.mark.parametrize("reply, strict, official", [
    ("YES", True, True), ("NO", False, False), (" yes.\n", True, True), ("No!", False, False),
    ("YES, it matches", None, True), ("Maybe", None, False), ("", None, False), (None, None, False),
    ("NOYES", None, True), ("The answer is yes", None, True),
])
def test_verdict_parsing(reply, strict, official):
    assert parse_verdict(reply, "strict") is strict
    assert parse_verdict(reply, "official") is official


def test_total_weights_and_config_errors():
    w = RewardWeights()
    assert w.total(judge=1, embedding=1, modality=1, format=1) == pytest.approx(1.0)
    assert w.total(judge=1, embedding=0, modality=0, format=1) == pytest.approx(0.9 * 0.575 + 0.1)
    assert RewardWeights(format=1.0, content=0.0).total(judge=1, embedding=1, modality=1, format=0.5) == 0.5
    with pytest.raises(ValueError, match="reward.weights.judge must be a finite number >= 0"):
        RewardConfig(weights=RewardWeights(judge=-1))
    with pytest.raises(ValueError, match="reward.parity must be one of"):
        RewardConfig(parity="loose")
    with pytest.raises(ValueError, match="needs reward.judge_url"):
        RewardConfig(judge="http")
    with pytest.raises(ValueError, match="reward.judge_concurrency must be an integer >= 1"):
        RewardConfig(judge_concurrency=0)
    assert RewardConfig(weights={"format": 0.2}).weights.format == 0.2
    assert set(RewardResult().to_dict()) >= {"total", "format", "modality", "judge", "embedding", "judge_failed",
                                             "exact_match", "invalid_answer", "judge_reply"}
