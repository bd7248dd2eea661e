"""One RL step's scored rollouts, and the training samples made from them.

``ScoredRollouts`` holds, for every response of the step (``group_size`` consecutive
responses per prompt, the order the engines return), what is known before the update:
prompt and response token ids (never re-tokenized text), the engine's log-probs, the
finish reason, the verifier reward (weights and ``reward_multiplier`` applied by the
Scorer) and the reward after the non-stop penalty, and, when the step needs them, the
reference's and the policy's (old) log-probs. ``to_samples`` adds an algorithm's
per-token fields (advantages, ...) and gives one :class:`Sample` per response, which
``batch.collate`` pads into micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from posttrain.data.prompts import Prompt


@dataclass
class ScoredRollouts:
    """A step's responses and what was computed from them before the update."""

    prompts: list[Prompt]
    """One per group, in order."""
    group_size: int
    """Responses per prompt; group ``k`` is rows ``[k*G, (k+1)*G)``."""
    response_ids: list[list[int]]
    texts: list[str]
    engine_logprobs: list[torch.Tensor]
    """``(L_i,)`` float32: the engine's log-probs of the sampled tokens."""
    finish_reasons: list[str]
    scores: torch.Tensor
    """``(B,)`` verifier rewards (weighted, times the multiplier), before any penalty."""
    rewards: torch.Tensor
    """``(B,)`` the rewards the advantages use (after the non-stop penalty)."""
    stopped: torch.Tensor
    """``(B,)`` bool: the response ended on a stop token."""
    ref_logprobs: list[torch.Tensor] | None = None
    """``(L_i,)`` the frozen reference's log-probs (when ``beta > 0``)."""
    old_logprobs: list[torch.Tensor] | None = None
    """``(L_i,)`` the policy's log-probs before this step's updates (when the step makes
    more than one update; with one, the trainer's own forward gives them)."""

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def prompt_ids(self) -> list[list[int]]:
        """The prompt of each response."""
        return [p.token_ids for p in self.prompts for _ in range(self.group_size)]

    @property
    def datasets(self) -> list:
        """The verifier name(s) of each response's prompt."""
        return [p.dataset for p in self.prompts for _ in range(self.group_size)]

    def select_groups(self, keep: Sequence[int]) -> "ScoredRollouts":
        """The rollouts of the groups ``keep`` (indices), in that order; groups stay whole."""
        rows = [k * self.group_size + j for k in keep for j in range(self.group_size)]
        index = torch.tensor(rows, dtype=torch.long)

        def pick(xs):
            return None if xs is None else [xs[i] for i in rows]

        return ScoredRollouts(
            prompts=[self.prompts[k] for k in keep], group_size=self.group_size,
            response_ids=pick(self.response_ids), texts=pick(self.texts), engine_logprobs=pick(self.engine_logprobs),
            finish_reasons=pick(self.finish_reasons), scores=self.scores[index], rewards=self.rewards[index],
            stopped=self.stopped[index], ref_logprobs=pick(self.ref_logprobs), old_logprobs=pick(self.old_logprobs))

    @staticmethod
    def concat(parts: Sequence["ScoredRollouts"]) -> "ScoredRollouts":
        """The groups of several rounds of sampling, in order."""
        if len(parts) == 1:
            return parts[0]

        def cat(name):
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else [x for v in values for x in v]

        return ScoredRollouts(
            prompts=cat("prompts"), group_size=parts[0].group_size, response_ids=cat("response_ids"),
            texts=cat("texts"), engine_logprobs=cat("engine_logprobs"), finish_reasons=cat("finish_reasons"),
            scores=torch.cat([p.scores for p in parts]), rewards=torch.cat([p.rewards for p in parts]),
            stopped=torch.cat([p.stopped for p in parts]), ref_logprobs=cat("ref_logprobs"),
            old_logprobs=cat("old_logprobs"))


@dataclass
class Sample:
    """One response as the trainer sees it; every tensor is ``(L,)`` over its tokens."""

    prompt_ids: list[int]
    response_ids: list[int]
    engine_logprobs: torch.Tensor
    advantages: torch.Tensor
    trained: bool = True
    """False: the response stays out of the loss (``mask_truncated`` on a truncated one)."""
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    """An algorithm's other per-token fields (PPO: values, returns), padded by name."""


def to_samples(rollouts: ScoredRollouts, fields: dict[str, list[torch.Tensor]], *, mask_truncated: bool
               ) -> list[Sample]:
    """One :class:`Sample` per response: ``fields`` holds the algorithm's per-sample
    tensors (``advantages`` required); ``mask_truncated`` leaves responses that did not
    stop out of the loss."""
    if "advantages" not in fields:
        raise ValueError("an algorithm's sample fields must include 'advantages'")
    prompt_ids = rollouts.prompt_ids
    out = []
    for i in range(len(rollouts)):
        extra = {k: v[i] for k, v in fields.items() if k != "advantages"}
        out.append(Sample(
            prompt_ids=prompt_ids[i], response_ids=rollouts.response_ids[i],
            engine_logprobs=rollouts.engine_logprobs[i], advantages=fields["advantages"][i],
            trained=not (mask_truncated and not bool(rollouts.stopped[i])),
            old_logprobs=None if rollouts.old_logprobs is None else rollouts.old_logprobs[i],
            ref_logprobs=None if rollouts.ref_logprobs is None else rollouts.ref_logprobs[i], extra=extra))
    return out
