"""Text verifiers: normalized exact match, token F1, and length targets.

* ``string_match``: SQuAD-style normalization (lower case, drop punctuation, drop the
  articles a/an/the, collapse whitespace) then equality; 1.0 if the response equals any
  reference (the ground truth may be a list, or a JSON list in a string).
* ``f1``: SQuAD token F1 between the normalized response and the reference; the maximum
  over a list of references.
* ``max_length``: the response should be *about* N tokens long:
  ``1 - |len - N| / scale``, floored at 0 (open-instruct's ``max_length`` semantics).
* ``up_to_max_length``: at most N tokens: 1.0 if ``len <= N`` else ``1 - (len - N) / scale``,
  floored at 0 (open-instruct's ``up_to_max_length``).

For the length verifiers "tokens" are whitespace-separated words (verifiers see text, not
token ids). The ground truth is N, or a dict / JSON object
``{"length": N, "unit": "words"|"chars", "scale": S}``; ``scale`` defaults to 8192 for
``max_length`` and 4096 for ``up_to_max_length``.
"""
from __future__ import annotations

import json
import re
import string
from collections import Counter

from .registry import ground_truth_list

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    s = str(s).lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _references(ground_truth) -> list[str]:
    return [str(v) for v in ground_truth_list(ground_truth)]


def verify_string_match(response: str, ground_truth, prompt: str | None = None):
    pred = normalize_answer(response)
    for ref in _references(ground_truth):
        if pred == normalize_answer(ref):
            return 1.0
    return 0.0, "no reference matches"


def token_f1(prediction: str, reference: str) -> float:
    p = normalize_answer(prediction).split()
    r = normalize_answer(reference).split()
    if not p or not r:
        return float(p == r)
    common = Counter(p) & Counter(r)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(p)
    recall = same / len(r)
    return 2 * precision * recall / (precision + recall)


def verify_f1(response: str, ground_truth, prompt: str | None = None) -> float:
    return max(token_f1(response, ref) for ref in _references(ground_truth))


def _length_spec(ground_truth, default_scale: float) -> tuple[float, str, float]:
    spec = ground_truth
    if isinstance(spec, str):
        t = spec.strip()
        if t.startswith("{"):
            spec = json.loads(t)
        else:
            spec = float(t)
    if isinstance(spec, dict):
        target = float(spec.get("length", spec.get("max_length")))
        unit = spec.get("unit", "words")
        scale = float(spec.get("scale", default_scale))
    else:
        target, unit, scale = float(spec), "words", default_scale
    if unit not in ("words", "chars"):
        raise ValueError(f"length unit must be 'words' or 'chars', got {unit!r}")
    if scale <= 0:
        raise ValueError("length scale must be positive")
    return target, unit, scale


def _length(text: str, unit: str) -> int:
    return len(text) if unit == "chars" else len(text.split())


def verify_max_length(response: str, ground_truth, prompt: str | None = None):
    target, unit, scale = _length_spec(ground_truth, 8192.0)
    n = _length(response, unit)
    score = max(0.0, 1.0 - abs(n - target) / scale)
    return score, f"{n} {unit}, target {target:g}"


def verify_up_to_max_length(response: str, ground_truth, prompt: str | None = None):
    target, unit, scale = _length_spec(ground_truth, 4096.0)
    n = _length(response, unit)
    if n <= target:
        return 1.0
    return max(0.0, 1.0 - (n - target) / scale), f"{n} {unit}, limit {target:g}"


def _length_truth_problem(ground_truth) -> str | None:
    try:
        _length_spec(ground_truth, 1.0)
    except (TypeError, ValueError) as e:
        return str(e)
    return None


# Checked before a run trains (posttrain.verifiers.registry.check_ground_truth).
verify_max_length.check_ground_truth = verify_up_to_max_length.check_ground_truth = _length_truth_problem
