"""Hand-computed cases for each built-in verifier (called directly, in this process)."""
import pytest

from posttrain.verifiers import call_verifier, get_verifier


def score(name, response, gt, prompt=None):
    return call_verifier(get_verifier(name), response, gt, prompt).score


@pytest.mark.parametrize("response,gt,expected", [
    ("She pays 18 dollars.", "18", 1.0),
    ("Total: 1,234,567.", "#### 1234567", 1.0),
    ("It is 3.50", "3.5", 1.0),
    ("the change is -7", "-7", 1.0),
    ("first 5 then 6", "5", 0.0),          # the *last* number counts
    ("no numbers here", "5", 0.0),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72", 1.0),
    ("$1,000 in total", "Janet ... so 1000 dollars.\n#### 1,000", 1.0),
    ("answer 10", 10, 1.0),
    ("answer 10.5", "10", 0.0),
])
def test_gsm8k(response, gt, expected):
    assert score("gsm8k", response, gt) == expected


@pytest.mark.parametrize("response,gt,expected", [
    ("So the answer is $\\boxed{\\frac{1}{2}}$.", "\\frac12", 1.0),
    ("The answer is $\\boxed{0.5}$", "\\frac{1}{2}", 1.0),
    ("Therefore $\\boxed{(2, 5]}$", "(2,5]", 1.0),
    ("Therefore $\\boxed{[2, 5]}$", "(2,5]", 0.0),
    ("$\\boxed{\\{1, 2, 3\\}}$", "\\{3,2,1\\}", 1.0),
    ("$\\boxed{2\\sqrt{2}}$", "\\sqrt{8}", 1.0),
    ("The answer is $\\boxed{7}$", "8", 0.0),
    ("no answer at all", "8", 0.0),
    ("$\\boxed{8}$", ["7", "8"], 1.0),           # any of several references
    ("$\\boxed{8}$", '["7", "8"]', 1.0),         # JSON-encoded list
])
def test_math(response, gt, expected):
    assert score("math", response, gt) == expected


def test_math_case_insensitive_name():
    assert score("MATH", "$\\boxed{3}$", "3") == 1.0


@pytest.mark.parametrize("response,gt,expected", [
    ("The Eiffel Tower!", "eiffel tower", 1.0),
    ("  an   apple. ", "Apple", 1.0),
    ("Paris", ["London", "paris"], 1.0),
    ("Paris", '["London", "Rome"]', 0.0),
    ("Paris, France", "Paris", 0.0),
])
def test_string_match(response, gt, expected):
    assert score("string_match", response, gt) == expected


def test_f1():
    # pred tokens [cat, sat, on, mat] vs ref [cat, sat]: P=2/4, R=1 -> F1=2/3
    assert score("f1", "The cat sat on the mat", "a cat sat") == pytest.approx(2 / 3)
    assert score("f1", "cat sat", ["dog", "cat sat"]) == 1.0
    assert score("f1", "dog", "cat") == 0.0


def test_max_length():
    assert score("max_length", "one two three four", "4") == 1.0
    assert score("max_length", "a " * 100, 4196) == pytest.approx(1 - 4096 / 8192)
    assert score("max_length", "a b", {"length": 4, "scale": 4}) == pytest.approx(0.5)
    assert score("max_length", "abcdef", '{"length": 4, "unit": "chars", "scale": 4}') == pytest.approx(0.5)
    assert score("max_length", "a " * 50, {"length": 0, "scale": 10}) == 0.0   # floored


def test_up_to_max_length():
    assert score("up_to_max_length", "one two", 5) == 1.0
    assert score("up_to_max_length", "a b c d e f g", {"length": 5, "scale": 4}) == pytest.approx(0.5)
    assert score("up_to_max_length", "a " * 100, {"length": 5, "scale": 4}) == 0.0


def test_code_asserts_and_program():
    sol = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    assert score("code", sol, ["assert add(1, 2) == 3", "assert add(2, 2) == 5"]) == 0.5
    assert score("code", sol, '["assert add(1, 2) == 3"]') == 1.0      # JSON string of tests
    assert score("code", sol, "assert add(1, 2) == 3\nassert add(0, 0) == 0\n") == 1.0
    assert score("code", sol, "assert add(1, 2) == 4\n") == 0.0
    # no fence: the whole response is the program; an untagged fence also counts, the last wins
    assert score("code", "def f():\n    return 1\n", ["assert f() == 1"]) == 1.0
    two = "```python\ndef f(): return 1\n```\nbetter:\n```\ndef f(): return 2\n```"
    assert score("code", two, ["assert f() == 2"]) == 1.0
    # a program that raises before the tests passes none
    assert score("code", "raise SystemExit(1)", ["assert True"]) == 0.0
