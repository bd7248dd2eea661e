"""GSM8K: the last number in the response equals the ground-truth number."""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# A number: optional sign, digits with optional thousands separators, optional decimals.
# Also ".5". A trailing period (end of sentence) is not part of the match.
_NUM = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")


def _to_decimal(s: str) -> Decimal | None:
    s = s.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def last_number(text: str) -> str | None:
    """The last number in ``text`` as written (separators kept), or None."""
    found = _NUM.findall(text)
    return found[-1] if found else None


def gold_number(ground_truth) -> Decimal | None:
    """The ground truth: a bare number or a GSM8K answer ending in ``#### N``."""
    if isinstance(ground_truth, (int, float)):
        return Decimal(str(ground_truth))
    gt = str(ground_truth)
    if "####" in gt:
        gt = gt.rsplit("####", 1)[1]
    d = _to_decimal(gt)
    if d is None:
        n = last_number(gt)
        d = _to_decimal(n) if n else None
    return d


def verify_gsm8k(response: str, ground_truth, prompt: str | None = None):
    gold = gold_number(ground_truth)
    if gold is None:
        return 0.0, f"ground truth {str(ground_truth)[-40:]!r} has no number"
    text = response
    if "####" in text:  # a GSM8K-style answer: only what follows the marker counts
        text = text.rsplit("####", 1)[1]
    n = last_number(text)
    if n is None:
        return 0.0, "no number in response"
    pred = _to_decimal(n)
    if pred is not None and pred == gold:
        return 1.0
    return 0.0, f"last number {n} != {gold}"


def _truth_problem(ground_truth) -> str | None:
    return None if gold_number(ground_truth) is not None else "it has no number"


# Checked before a run trains (posttrain.verifiers.registry.check_ground_truth).
verify_gsm8k.check_ground_truth = _truth_problem
