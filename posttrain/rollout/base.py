"""The interface every rollout engine implements, and what it returns.

An engine samples responses for prompts given as token ids and reports, for every
sample, the response's token ids (never re-tokenized text: text does not round-trip),
the decoded text, the log-prob of each sampled token under the sampling distribution and
why the sample ended. RL stages train on exactly those tokens; the log-probs are the
"old" (behaviour) log-probs of the importance ratio, and the gap between them and the
trainer's own log-probs of the same tokens is the train/inference mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal, Protocol, Sequence, runtime_checkable

import torch

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample. ``temperature == 0`` is greedy decoding."""

    max_new_tokens: int = 128
    """Most tokens per response; a response that reaches it unstopped ends with ``length``."""
    temperature: float = 1.0
    """Divides the logits before sampling; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 disables it."""
    stop_token_ids: tuple[int, ...] = ()
    """Tokens that end a response (the end-of-turn token, OLMo 2's EOS). The stop token is
    part of the response (the policy must learn to emit it), with finish reason ``stop``."""
    seed: int | None = None
    """Seed of the sampling; the same seed, prompts, n and weights give the same samples."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Rollouts:
    """Samples for a batch of prompts, ``n`` per prompt, grouped by prompt: sample ``i``
    answers prompt ``prompt_index[i]``, and the samples of one prompt are contiguous, in
    prompt order."""

    prompt_index: list[int]
    """Index into the engine call's prompts, per sample."""
    token_ids: list[list[int]]
    """Response token ids per sample (the stop token included when it stopped)."""
    texts: list[str]
    """Decoded responses, special tokens skipped."""
    logprobs: list[list[float]]
    """Log-prob of each response token under the sampling distribution, i.e.
    ``log_softmax(logits / temperature)`` (at temperature 0, under the untempered
    logits): exactly what a trainer recomputes at that temperature. With top-k/top-p on,
    both engines report the distribution that actually sampled: truncated to the kept
    tokens and renormalised (vLLM's ``processed_logprobs``), which the trainer's full
    softmax does not reproduce. Same length as ``token_ids``."""
    finish_reasons: list[FinishReason]
    """``stop`` (ended on a stop token) or ``length`` (reached ``max_new_tokens``)."""
    extra: dict = field(default_factory=dict)
    """Engine-specific timing or statistics (e.g. ``generate_s``, ``tokens``)."""

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)


@runtime_checkable
class RolloutEngine(Protocol):
    """Sampling engine: ``generate`` for rollouts, ``update_weights`` after each policy
    update, ``sleep``/``wake`` to lend its memory to the trainer between rollouts."""

    def generate(self, prompt_token_ids: Sequence[Sequence[int]], n: int, sampling: SamplingConfig) -> Rollouts:
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load the trainer's current weights (full, unsharded, LoRA merged; names as in
        the model's ``state_dict``)."""
        ...

    def sleep(self) -> None:
        ...

    def wake(self) -> None:
        ...

    def close(self) -> None:
        ...
