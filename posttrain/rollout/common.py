"""Pieces both engines share: the order in which prompts are sampled, cutting a sampled
row at its stop token, and the temperature the reported log-probs are taken at."""

from __future__ import annotations

from typing import Sequence

from posttrain.rollout.base import FinishReason, SamplingConfig


def check_request(prompt_token_ids: Sequence[Sequence[int]], n: int, sampling: SamplingConfig) -> None:
    """One-line errors for a malformed request, before any work."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if sampling.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {sampling.max_new_tokens}")
    if sampling.temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {sampling.temperature}")
    if not 0 < sampling.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {sampling.top_p}")
    if sampling.top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables it), got {sampling.top_k}")
    for i, p in enumerate(prompt_token_ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")


def logprob_temperature(sampling: SamplingConfig) -> float:
    """The temperature of the distribution the engines report log-probs under (and the
    one a trainer must use to compare): the sampling temperature, or 1 when greedy."""
    return 1.0 if sampling.greedy else sampling.temperature


def cut_at_stop(tokens: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[int], FinishReason]:
    """The response up to and including its first stop token (``stop``), or all of it
    (``length``)."""
    stops = set(stop_ids)
    for k, t in enumerate(tokens):
        if t in stops:
            return list(tokens[: k + 1]), "stop"
    return list(tokens), "length"


def longest_first(prompt_token_ids: Sequence[Sequence[int]]) -> list[int]:
    """Prompt indices, longest prompt first (ties in prompt order): batches of similar
    length waste little padding, and the order is fixed by the prompts alone."""
    return sorted(range(len(prompt_token_ids)), key=lambda i: (-len(prompt_token_ids[i]), i))
