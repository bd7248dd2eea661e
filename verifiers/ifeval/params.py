"""Checker tables and their argument validation, shared by ``ifeval`` and ``ifeval_old``.

A validator takes ``(name, value)`` and returns the value to check with, or raises
``ValueError`` naming the argument: ground truth that cannot be graded must fail
loudly rather than grade against a guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Collection


@dataclass(frozen=True)
class Checker:
    """One table entry: the IFEval instruction it grades, its rule, and a validator per argument."""

    ifeval_id: str
    check: Callable[..., bool]
    params: dict[str, Callable[[str, Any], Any]]


def registrar(table: dict[str, Checker]):
    """A decorator factory filling ``table``: ``@entry(name, ifeval_id=name, **validators)``."""

    def entry(name: str, ifeval_id: str | None = None, **params: Callable[[str, Any], Any]):
        def register(check: Callable[..., bool]) -> Callable[..., bool]:
            table[name] = Checker(ifeval_id or name, check, params)
            return check

        return register

    return entry


def json_object(label: str, ground_truth: Any) -> dict[str, Any]:
    """Ground truth as a dict, from a dict or its JSON string; ``label`` names the verifier."""
    if isinstance(ground_truth, str):
        try:
            ground_truth = json.loads(ground_truth)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{label} ground truth is not valid JSON: {exc}") from None
    if not isinstance(ground_truth, dict):
        raise ValueError(f"{label} ground truth must be a dict, got {type(ground_truth).__name__}")
    return ground_truth


def count(name: str, value: Any) -> int:
    """A non-negative integer threshold (JSON may carry it as 3.0)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"kwarg {name!r} must be a non-negative integer, got {value!r}")
    return value


def one_of(allowed: Collection[str]) -> Callable[[str, Any], str]:
    """A validator accepting only the given words, e.g. comparison relations."""

    def validate(name: str, value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"kwarg {name!r} must be one of {sorted(allowed)}, got {value!r}")
        return value

    return validate


def text(name: str, value: Any) -> str:
    """A non-empty string, stripped (the reference strips markers and phrases)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"kwarg {name!r} must be a non-empty string, got {value!r}")
    return value.strip()


def raw_text(name: str, value: Any) -> str:
    """A non-empty string kept exactly as given (for checks that compare it verbatim)."""
    text(name, value)
    return value


def words(name: str, value: Any) -> tuple[str, ...]:
    """A non-empty list of non-empty strings."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"kwarg {name!r} must be a non-empty list of strings, got {value!r}")
    return tuple(raw_text(name, word) for word in value)


def character(name: str, value: Any) -> str:
    """Exactly one character."""
    if not isinstance(value, str) or len(value.strip()) != 1:
        raise ValueError(f"kwarg {name!r} must be a single character, got {value!r}")
    return value.strip()


def lowered(validate: Callable[[str, Any], str]) -> Callable[[str, Any], str]:
    """Wrap a string validator so the value is compared in lower case."""
    return lambda name, value: validate(name, value).lower()


def bind(
    owner: str,
    specs: dict[str, Callable[[str, Any], Any]],
    given: dict[str, Any],
    extra: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Validate ``given`` against ``specs`` for ``owner`` (an instruction or function name).

    ``None`` values are dropped first: datasets give every row the union of all
    argument names, ``None`` where unused. Every spec is required, since a missing
    argument leaves nothing to grade against. ``extra`` checks across arguments.
    """
    present = {name: value for name, value in given.items() if value is not None}
    unknown = sorted(set(present) - set(specs))
    if unknown:
        raise ValueError(f"{owner} takes no argument(s) {unknown}; it takes {sorted(specs)}")
    missing = sorted(set(specs) - set(present))
    if missing:
        raise ValueError(f"{owner} needs argument(s) {missing}")
    try:
        bound = {name: validate(name, present[name]) for name, validate in specs.items()}
        if extra is not None:
            extra(bound)
    except ValueError as exc:
        raise ValueError(f"{owner}: {exc}") from None
    return bound
