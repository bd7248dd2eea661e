"""Verifier registry: names -> callables.

A verifier is any callable ``fn(response: str, ground_truth, prompt: str | None = None)``
returning a float in [0, 1] or a ``(score, reason)`` pair. :func:`call_verifier` turns
whatever it returns into a :class:`VerifierResult`.

Lookup order in :func:`get_verifier`:

1. names registered with :func:`register_verifier` in this process;
2. built-in verifiers (imported lazily, so ``math_verify`` is only imported when needed);
3. entry points in the group ``posttrain.verifiers`` (third-party plugins);
4. a ``module:object`` path.

Names are matched exactly first, then case-insensitively (Tülu 3 data says ``MATH``).

Reasoning format: by default :func:`call_verifier` hands every verifier the *final
answer* of the response (:func:`posttrain.verifiers.reasoning.final_answer`: the text
after the last ``</think>``, inside the last ``<answer>…</answer>`` when present) and
scores a response whose thinking never ends 0 with the reason ``unfinished thinking``,
without calling the verifier. ``call_verifier(..., reasoning_format=False)`` passes the
raw response instead (for data where such tags are literal content). A verifier that
judges the whole response (the format verifiers) sets the attribute
``full_response = True`` on its function and always gets the raw text.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable

from .reasoning import UNFINISHED_THINKING, final_answer

ENTRY_POINT_GROUP = "posttrain.verifiers"

Verifier = Callable[..., Any]


@dataclass(frozen=True)
class VerifierResult:
    score: float
    reason: str | None = None


class UnknownVerifierError(KeyError, ValueError):
    """No verifier under this name. ``str()`` is a one-line message listing the known names."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class VerifierLoadError(UnknownVerifierError):
    """The name is known but its module cannot be imported (e.g. a missing optional package)."""


_REGISTRY: dict[str, Verifier] = {}

# Built-ins, imported on first use. The values are "module:attribute" paths.
_BUILTINS: dict[str, str] = {
    "gsm8k": "posttrain.verifiers.gsm8k:verify_gsm8k",
    "math": "posttrain.verifiers.math:verify_math",
    "string_match": "posttrain.verifiers.text:verify_string_match",
    "f1": "posttrain.verifiers.text:verify_f1",
    "max_length": "posttrain.verifiers.text:verify_max_length",
    "up_to_max_length": "posttrain.verifiers.text:verify_up_to_max_length",
    "code": "posttrain.verifiers.code:verify_code",
    "think_format": "posttrain.verifiers.reasoning:verify_think_format",
    "answer_format": "posttrain.verifiers.reasoning:verify_answer_format",
    # Written in verifiers/ifeval/ by another engineer; an ImportError there must not break
    # the other verifiers, so these are only imported when asked for.
    "ifeval": "posttrain.verifiers.ifeval:verify_ifeval",
    "ifeval_old": "posttrain.verifiers.ifeval:verify_ifeval_old",
}

_entry_points_cache: dict[str, metadata.EntryPoint] | None = None


def register_verifier(name: str) -> Callable[[Verifier], Verifier]:
    """Decorator: ``@register_verifier("my_task")`` makes ``get_verifier("my_task")`` return fn."""
    if not name or not isinstance(name, str):
        raise ValueError("verifier name must be a non-empty string")

    def deco(fn: Verifier) -> Verifier:
        if not callable(fn):
            raise TypeError(f"verifier {name!r} is not callable")
        _REGISTRY[name] = fn
        return fn

    return deco


def _entry_points() -> dict[str, metadata.EntryPoint]:
    global _entry_points_cache
    if _entry_points_cache is None:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
        _entry_points_cache = {ep.name: ep for ep in eps}
    return _entry_points_cache


def refresh_entry_points() -> None:
    """Forget the cached entry-point list (after installing a plugin in a running process)."""
    global _entry_points_cache
    _entry_points_cache = None
    importlib.invalidate_caches()


def _builtin_available(path: str) -> bool:
    mod = path.split(":", 1)[0]
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def available_verifiers() -> list[str]:
    """Sorted names: registered, built-in (whose module exists) and entry-point plugins."""
    names = set(_REGISTRY)
    names.update(n for n, p in _BUILTINS.items() if _builtin_available(p))
    names.update(_entry_points())
    return sorted(names)


def _load_path(path: str) -> Verifier:
    mod_name, _, attr = path.partition(":")
    obj: Any = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{path} is not callable")
    return obj


def _unknown(name: str) -> UnknownVerifierError:
    return UnknownVerifierError(
        f"unknown verifier {name!r}; known: {', '.join(available_verifiers())} "
        "(or a 'module:object' path)"
    )


def get_verifier(name_or_path: str) -> Verifier:
    """Return the verifier callable for a registered name, plugin name or ``module:object`` path.

    Raises :class:`UnknownVerifierError` (a ``KeyError`` and ``ValueError``) if none matches.
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise UnknownVerifierError(f"verifier name must be a non-empty string, got {name_or_path!r}")
    candidates = [name_or_path]
    if name_or_path.lower() != name_or_path:
        candidates.append(name_or_path.lower())
    for name in candidates:
        if name in _REGISTRY:
            return _REGISTRY[name]
        if name in _BUILTINS:
            try:
                fn = _load_path(_BUILTINS[name])
            except ImportError as e:
                raise VerifierLoadError(f"verifier {name!r} is not available: {e}") from None
            _REGISTRY[name] = fn
            return fn
        ep = _entry_points().get(name)
        if ep is not None:
            try:
                fn = ep.load()
            except Exception as e:  # a broken plugin: say which and why, in one line
                raise VerifierLoadError(
                    f"verifier plugin {name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}"
                ) from None
            if not callable(fn):
                raise VerifierLoadError(f"verifier plugin {name!r} ({ep.value}) is not callable")
            _REGISTRY[name] = fn
            return fn
    if ":" in name_or_path:
        try:
            fn = _load_path(name_or_path)
        except (ImportError, AttributeError, TypeError, ValueError) as e:
            raise UnknownVerifierError(
                f"cannot load verifier {name_or_path!r}: {type(e).__name__}: {e}"
            ) from None
        _REGISTRY[name_or_path] = fn
        return fn
    raise _unknown(name_or_path)


def check_ground_truth(name: str, value: Any) -> str | None:
    """Why verifier ``name`` cannot read ``value`` as a ground truth (one line), or None when
    it can, or when the verifier has no check. A verifier whose ground truth has a format
    declares its check as an attribute of its function, ``fn.check_ground_truth = check``
    with ``check(value) -> str | None``, so data can be checked before any model loads
    rather than scoring 0 on every row in training. A check that raises counts as a
    problem (its message the reason). Raises :class:`UnknownVerifierError` for an unknown
    name, as :func:`get_verifier`."""
    check = getattr(get_verifier(name), "check_ground_truth", None)
    if check is None:
        return None
    try:
        problem = check(value)
    except Exception as e:  # noqa: BLE001 (whatever the parser raises is the reason)
        return str(e) or type(e).__name__
    return None if problem is None else str(problem)


def normalize_result(out: Any) -> VerifierResult:
    """Turn a verifier's return value into a VerifierResult; raise ValueError if it is not one."""
    reason = None
    if isinstance(out, VerifierResult):
        score, reason = out.score, out.reason
    elif isinstance(out, tuple) and len(out) == 2:
        score, reason = out
    else:
        score = out
    if isinstance(score, bool):
        score = float(score)
    if not isinstance(score, (int, float)) or isinstance(score, complex):
        try:
            score = float(score)  # numpy scalars and the like
        except (TypeError, ValueError):
            raise ValueError(f"verifier returned {type(out).__name__}, not a score") from None
    score = float(score)
    if math.isnan(score):
        raise ValueError("verifier returned NaN")
    if score < 0.0 or score > 1.0:
        raise ValueError(f"verifier returned {score}, outside [0, 1]")
    if reason is not None and not isinstance(reason, str):
        reason = str(reason)
    return VerifierResult(score, reason)


def ground_truth_list(ground_truth: Any) -> list[Any]:
    """The ground truth as a list of references: a list as is, a JSON list in a string
    parsed (the column is often JSON-encoded), anything else wrapped in a one-element list."""
    if isinstance(ground_truth, str):
        t = ground_truth.strip()
        if t.startswith("[") and t.endswith("]"):
            try:
                val = json.loads(t)
            except ValueError:
                val = None
            if isinstance(val, list):
                return val
        return [ground_truth]
    if isinstance(ground_truth, (list, tuple)):
        return list(ground_truth)
    return [ground_truth]


def call_verifier(fn: Verifier, response: str, ground_truth: Any, prompt: str | None = None, *,
                  reasoning_format: bool = True) -> VerifierResult:
    """Call ``fn`` and normalize its result. Exceptions propagate (the scorer records them).

    With ``reasoning_format`` (the default) ``fn`` judges the response's final answer, and
    a response whose ``<think>`` never closes scores 0 (``unfinished thinking``) unless
    ``fn.full_response`` is true; without it ``fn`` gets the response as it is."""
    if reasoning_format and not getattr(fn, "full_response", False):
        answer = final_answer(response)
        if answer is None:
            return VerifierResult(0.0, UNFINISHED_THINKING)
        response = answer
    return normalize_result(fn(response, ground_truth, prompt=prompt))
