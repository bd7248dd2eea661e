"""``check_ground_truth(name, value)``: the verifier's own reason a ground truth cannot be
read, or None. The input check runs it on every prompt row before any model loads."""

from __future__ import annotations

import uuid

import pytest

from posttrain.verifiers import registry
from posttrain.verifiers.registry import UnknownVerifierError, check_ground_truth, register_verifier


@pytest.mark.parametrize("name,value,problem", [
    ("gsm8k", "#### 1,234", None),
    ("gsm8k", 7, None),
    ("GSM8K", "two", "it has no number"),  # names match case-insensitively, as in scoring
    ("max_length", '{"length": 5, "unit": "chars"}', None),
    ("max_length", "many", "could not convert string to float: 'many'"),
    ("up_to_max_length", {"max_length": 5, "unit": "lines"}, "length unit must be 'words' or 'chars', got 'lines'"),
    ("up_to_max_length", {"length": 5, "scale": 0}, "length scale must be positive"),
    ("code", ["assert f() == 1"], None),
    ("code", '{"program": "print(1)"}', None),
    ("code", 5, "code ground truth must be tests or a test program, got int"),
    ("code", {"tests": ["assert 1"], "program": "x"}, "code ground truth needs exactly one of 'tests' and 'program'"),
    ("math", "anything at all", None),  # no check: math_verify reads any string
])
def test_builtin_checks(name, value, problem):
    assert check_ground_truth(name, value) == problem


@pytest.fixture
def even():
    """A third-party-style verifier registered for one test (and forgotten after)."""
    name = f"test_even_{uuid.uuid4().hex[:8]}"

    @register_verifier(name)
    def fn(response, ground_truth, prompt=None):
        return float(len(response) % int(ground_truth) == 0)

    yield name, fn
    registry._REGISTRY.pop(name, None)


def test_a_verifier_declares_its_check_on_its_function(even):
    name, fn = even
    assert check_ground_truth(name, "x") is None  # no check declared: anything goes
    fn.check_ground_truth = lambda value: None if str(value).isdigit() else "not a whole number"
    assert check_ground_truth(name, "2") is None
    assert check_ground_truth(name, "x") == "not a whole number"
    fn.check_ground_truth = lambda value: int(value)  # a check that raises: its message is the reason
    assert check_ground_truth(name, "x") == "invalid literal for int() with base 10: 'x'"


def test_unknown_verifier():
    with pytest.raises(UnknownVerifierError, match="unknown verifier 'no_such_verifier'"):
        check_ground_truth("no_such_verifier", 1)
