"""Pluggable reward verifiers; installs as ``posttrain.verifiers``.

A verifier is ``fn(response: str, ground_truth, prompt: str | None = None)`` returning a
float in [0, 1] or ``(score, reason)``. Look one up with :func:`get_verifier`, score many
rows in parallel worker processes with :func:`score_rows` (or a long-lived :class:`Scorer`).
Verifiers judge the final answer of reasoning-format responses (``<think>…</think>``, then
the answer, maybe in ``<answer>`` tags) unless ``reasoning_format=False``; see
:mod:`posttrain.verifiers.reasoning`.
"""
from .registry import (
    ENTRY_POINT_GROUP,
    UnknownVerifierError,
    VerifierLoadError,
    VerifierResult,
    available_verifiers,
    call_verifier,
    get_verifier,
    register_verifier,
)
from .scoring import ScoreResults, Scorer, score_rows

__all__ = [
    "ENTRY_POINT_GROUP",
    "ScoreResults",
    "Scorer",
    "UnknownVerifierError",
    "VerifierLoadError",
    "VerifierResult",
    "available_verifiers",
    "call_verifier",
    "get_verifier",
    "register_verifier",
    "score_rows",
]
