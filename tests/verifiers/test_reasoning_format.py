"""Reasoning-format responses: every built-in verifier judges the final answer.

Each verifier gets the same answer four ways: bare, after a thinking block, inside
answer tags after one, and after a thinking block that never closes. The thinking is
written to mislead a verifier that reads the whole text (capitals for a lowercase rule,
extra words for F1 and length, a wrong number or program last)."""
import pytest

from posttrain.verifiers import VerifierResult, call_verifier, get_verifier, register_verifier
from posttrain.verifiers.reasoning import final_answer

THINK = "<think>\nLET ME THINK. Maybe 13? Or this:\n```python\ndef double(x):\n    return 0\n```\n</think>\n\n"
UNCLOSED = "<think>\nLET ME THINK. Maybe 13?\n"

# (verifier, answer, ground truth, score of the answer)
CASES = [
    ("gsm8k", "The total is 42.", "#### 42", 1.0),
    ("math", "So $\\boxed{\\frac{1}{2}}$.", "0.5", 1.0),
    ("string_match", "London", "london", 1.0),
    ("f1", "the cat sat", "cat sat", 1.0),
    ("max_length", "one two three", {"length": 3, "scale": 4}, 1.0),
    ("up_to_max_length", "one two three", {"length": 3, "scale": 4}, 1.0),
    ("ifeval", "all in lower case.", {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}, 1.0),
    ("ifeval_old", "all in lower case.", {"func_name": "validate_lowercase"}, 1.0),
    ("code", "```python\ndef double(x):\n    return 2 * x\n```", ["assert double(2) == 4", "assert double(0) == 0"], 1.0),
]


def score(name, response, gt, **kw):
    return call_verifier(get_verifier(name), response, gt, None, **kw)


@pytest.mark.parametrize("name,answer,gt,expected", CASES, ids=[c[0] for c in CASES])
def test_each_verifier_judges_the_final_answer(name, answer, gt, expected):
    assert score(name, answer, gt).score == expected
    assert score(name, THINK + answer, gt).score == expected
    assert score(name, THINK + "<answer>" + answer + "</answer>", gt).score == expected
    assert score(name, UNCLOSED + answer, gt) == VerifierResult(0.0, "unfinished thinking")


@pytest.mark.parametrize("name,answer,gt,expected", [c for c in CASES if c[0] not in ("gsm8k", "math", "code")],
                         ids=[c[0] for c in CASES if c[0] not in ("gsm8k", "math", "code")])
def test_the_switch_judges_the_raw_text(name, answer, gt, expected):
    # Judged as it is, the thinking text counts: capitals, extra words, the tags.
    assert score(name, THINK + "<answer>" + answer + "</answer>", gt, reasoning_format=False).score < expected
    # ... and an unclosed thinking block is just text.
    assert score(name, UNCLOSED + answer, gt, reasoning_format=False).reason != "unfinished thinking"


def test_the_issue_example():
    assert score("string_match", "<answer>London</answer>", "london").score == 1.0
    assert score("string_match", "<answer>London</answer>", "london", reasoning_format=False).score == 0.0


@pytest.mark.parametrize("response,answer", [
    ("plain 42", "plain 42"),                                  # no tags: as it is, whitespace too
    ("  spaced  ", "  spaced  "),
    ("<think>a</think> b ", "b"),
    ("<think>a</think>x<think>b</think>\n c", "c"),            # after the last </think>
    ("reasoning in the prompt's <think>...</think> 7", "7"),    # the template opened it
    ("<think>a</think><answer> 1 </answer> tail", "1"),
    ("<answer>1</answer> then <answer>2</answer>", "2"),       # the last answer block
    ("<think>a</think><answer>cut off", "cut off"),            # never closed: to the end
    ("<think>a", None),
    ("<think>a</think> b <think>c", None),                    # opened again, never closed
    ("", ""),
])
def test_final_answer(response, answer):
    assert final_answer(response) == answer


@pytest.mark.parametrize("response,think,answer", [
    ("<think>17+25=42</think>\n<answer>42</answer>", 1.0, 1.0),
    ("  <think>\nx\n</think>\n\n<answer>\n42\n</answer>\n", 1.0, 1.0),
    ("<think>x</think> 42", 1.0, 0.0),                       # answer not in tags
    ("<think></think><answer>42</answer>", 1.0, 1.0),         # empty thinking is still the format
    ("<think>x</think><answer> </answer>", 1.0, 0.0),         # empty answer
    ("<think>x</think><answer>4</answer><answer>2</answer>", 1.0, 0.0),
    ("<think>x</think><answer>42</answer> and more", 1.0, 0.0),
    ("<think>x</think>", 0.0, 0.0),                           # nothing after thinking
    ("<think>x", 0.0, 0.0),                                   # unfinished
    ("<think>x</think>y<think>z</think>42", 0.0, 0.0),        # two thinking blocks
    ("<think>x<think>y</think>42", 0.0, 0.0),
    ("42 <think>x</think> 42", 0.0, 0.0),                     # not at the start
    ("<answer>42</answer>", 0.0, 0.0),
])
def test_format_verifiers(response, think, answer):
    # They judge the whole response, with or without the reasoning-format switch.
    for switch in (True, False):
        assert score("think_format", response, None, reasoning_format=switch).score == think
        assert score("answer_format", response, None, reasoning_format=switch).score == answer


def test_format_reasons():
    assert score("think_format", "<think>x", None).reason == "unfinished thinking"
    assert score("think_format", "42", None).reason == "no <think> block at the start"
    assert score("answer_format", "<think>x</think> 42", None).reason == \
        "the answer is not one <answer>...</answer> block"


def test_plugins_get_the_final_answer_unless_they_ask_for_the_whole_response():
    seen = []

    @register_verifier("test_reasoning_sees")
    def sees(response, ground_truth, prompt=None):
        seen.append(response)
        return 1.0

    @register_verifier("test_reasoning_sees_all")
    def sees_all(response, ground_truth, prompt=None):
        seen.append(response)
        return 1.0

    sees_all.full_response = True
    score("test_reasoning_sees", "<think>a</think> b", None)
    score("test_reasoning_sees_all", "<think>a</think> b", None)
    assert seen == ["b", "<think>a</think> b"]
    assert score("test_reasoning_sees", "<think>a", None) == VerifierResult(0.0, "unfinished thinking")
    assert len(seen) == 2  # not called
