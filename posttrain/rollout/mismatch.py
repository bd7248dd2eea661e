"""Train/inference mismatch: how far the engine's log-probs of the sampled tokens are
from the trainer's own log-probs of the same tokens. Every peer logs it: a growing gap
(different kernels, bf16, a stale or half-synced engine) biases the importance ratios and
is a known cause of RL instability."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from posttrain.rollout.base import Rollouts, SamplingConfig
from posttrain.rollout.common import logprob_temperature


@dataclass(frozen=True)
class Mismatch:
    """Mean and max of ``|engine log-prob - trainer log-prob|`` over the sampled tokens."""

    mean: float
    max: float
    tokens: int

    def metrics(self, prefix: str = "rollout/logprob_diff") -> dict[str, float]:
        """``{prefix}_mean`` and ``{prefix}_max``, for the metrics log."""
        return {f"{prefix}_mean": self.mean, f"{prefix}_max": self.max}


def logprob_mismatch(engine_logprobs: Sequence[Sequence[float]],
                     trainer_logprobs: Sequence[torch.Tensor | Sequence[float]]) -> Mismatch:
    """Mismatch between per-sample log-prob lists of equal lengths (e.g.
    ``rollouts.logprobs`` and the trainer's log-probs of ``rollouts.token_ids`` at the
    same temperature). Zero tokens give zeros."""
    if len(engine_logprobs) != len(trainer_logprobs):
        raise ValueError(f"{len(engine_logprobs)} engine samples vs {len(trainer_logprobs)} trainer samples")
    diffs = []
    for i, (e, t) in enumerate(zip(engine_logprobs, trainer_logprobs)):
        t = torch.as_tensor(t, dtype=torch.float64).detach().cpu().reshape(-1)
        e = torch.as_tensor(e, dtype=torch.float64).reshape(-1)
        if e.shape != t.shape:
            raise ValueError(f"sample {i}: {e.numel()} engine log-probs vs {t.numel()} trainer log-probs")
        diffs.append((e - t).abs())
    d = torch.cat(diffs) if diffs else torch.zeros(0, dtype=torch.float64)
    if d.numel() == 0:
        return Mismatch(0.0, 0.0, 0)
    return Mismatch(float(d.mean()), float(d.max()), int(d.numel()))


def rollout_logprobs(model, prompt_token_ids: Sequence[Sequence[int]], rollouts: Rollouts, sampling: SamplingConfig,
                     pad_id: int, *, batch_size: int = 16) -> list[torch.Tensor]:
    """The trainer's (no-grad) log-probs of every rollout's tokens, at the temperature the
    engine reported them at: one 1-D tensor per sample."""
    from posttrain.logprobs import response_logprobs

    prompts = [prompt_token_ids[i] for i in rollouts.prompt_index]
    return response_logprobs(model, prompts, rollouts.token_ids, pad_id, temperature=logprob_temperature(sampling),
                             batch_size=batch_size)


def rollout_mismatch(model, prompt_token_ids: Sequence[Sequence[int]], rollouts: Rollouts, sampling: SamplingConfig,
                     pad_id: int, *, batch_size: int = 16) -> Mismatch:
    """:func:`logprob_mismatch` of ``rollouts`` against ``model``'s own log-probs (one
    extra no-grad forward; an RL step that already has its trainer log-probs should call
    :func:`logprob_mismatch` with them instead)."""
    return logprob_mismatch(rollouts.logprobs,
                            rollout_logprobs(model, prompt_token_ids, rollouts, sampling, pad_id, batch_size=batch_size))
