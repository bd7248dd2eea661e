"""Reasoning-format responses: ``<think>…</think>`` then the answer, maybe in ``<answer>`` tags.

Models trained with RLVR usually think before they answer (the DeepSeek-R1 format):

    <think>17 + 25: ones 7 + 5 = 12 ...</think>
    <answer>42</answer>

:func:`final_answer` is what verifiers judge: the text after the last ``</think>``, and
inside the last ``<answer>…</answer>`` when there is one (to the end of the text when
that tag is never closed), without surrounding whitespace. A response without any of
these tags is judged as it is. A response that opens ``<think>`` and never closes it has
no answer: ``None`` (the registry scores it 0 with the reason ``unfinished thinking``).

``think_format`` and ``answer_format`` score the format itself, as the format rewards
of R1-style recipes do (used beside a correctness verifier, with a weight). They see
the whole response (their ``full_response`` attribute) and ignore the ground truth:

* ``think_format``: 1 if the response is one thinking block at the start, closed, then a
  non-empty answer with no further thinking tags;
* ``answer_format``: 1 if, in addition, the answer is one ``<answer>…</answer>`` block
  with something in it and nothing outside it but whitespace.
"""
from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
UNFINISHED_THINKING = "unfinished thinking"


def final_answer(response: str) -> str | None:
    """The answer part of a reasoning-format response; None when thinking never ends."""
    close = response.rfind(THINK_CLOSE)
    if response.rfind(THINK_OPEN) > close:  # opened (again) after the last close, never closed
        return None
    text = response
    tagged = close >= 0
    if tagged:
        text = text[close + len(THINK_CLOSE):]
    start = text.rfind(ANSWER_OPEN)
    if start >= 0:
        tagged = True
        text = text[start + len(ANSWER_OPEN):]
        end = text.find(ANSWER_CLOSE)
        if end >= 0:
            text = text[:end]
    return text.strip() if tagged else response


def _split_thinking(response: str) -> tuple[str | None, str]:
    """(answer after one leading thinking block, or None; the reason when None)."""
    text = response.lstrip()
    if not text.startswith(THINK_OPEN):
        return None, "no <think> block at the start"
    close = text.find(THINK_CLOSE)
    if close < 0:
        return None, UNFINISHED_THINKING
    thinking = text[len(THINK_OPEN):close]
    answer = text[close + len(THINK_CLOSE):]
    if THINK_OPEN in thinking or THINK_OPEN in answer or THINK_CLOSE in answer:
        return None, "more than one thinking block"
    if not answer.strip():
        return None, "nothing after </think>"
    return answer, ""


def verify_think_format(response: str, ground_truth=None, prompt: str | None = None):
    answer, why = _split_thinking(response)
    return (1.0, None) if answer is not None else (0.0, why)


def verify_answer_format(response: str, ground_truth=None, prompt: str | None = None):
    answer, why = _split_thinking(response)
    if answer is None:
        return 0.0, why
    body = answer.strip()
    if not (body.startswith(ANSWER_OPEN) and body.endswith(ANSWER_CLOSE)):
        return 0.0, "the answer is not one <answer>...</answer> block"
    inner = body[len(ANSWER_OPEN):-len(ANSWER_CLOSE)]
    if ANSWER_OPEN in inner or ANSWER_CLOSE in inner:
        return 0.0, "more than one <answer> block"
    if not inner.strip():
        return 0.0, "empty <answer> block"
    return 1.0, None


verify_think_format.full_response = True
verify_answer_format.full_response = True
