"""GRPO (DeepSeekMath; OLMo 2 1B Instruct's RLVR): no value model; each response's
advantage is its reward against its group's (``advantage: grpo``, ``scale_rewards``) or
the leave-one-out baseline (``rloo``), the same on all its tokens; the policy takes the
clipped surrogate (or GSPO / CISPO) with the KL to the reference in the loss."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from posttrain.rl.advantages import AdvantageInputs, AdvantageParams, compute_advantages
from posttrain.stages.rlvr.algorithm import register_algorithm
from posttrain.stages.rlvr.loss import count_items, make_policy_loss
from posttrain.stages.rlvr.rollouts import ScoredRollouts


def group_advantages(rewards: torch.Tensor, group_size: int, estimator: str, scale_rewards: str,
                     batch_rewards: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)`` sequence advantages of consecutive groups. ``batch_rewards`` (all
    processes' rewards) gives ``scale_rewards: batch`` the whole batch's std when the
    groups are spread over processes."""
    mask = torch.ones(rewards.shape[0], 1, dtype=torch.bool)
    params = AdvantageParams(scale_rewards="none" if scale_rewards == "batch" else scale_rewards)
    adv = compute_advantages(estimator, AdvantageInputs(rewards=rewards, mask=mask, group_size=group_size),
                             params).advantages[:, 0]
    if scale_rewards == "batch" and estimator == "grpo":
        std = (rewards if batch_rewards is None else batch_rewards).float().std()
        adv = adv / (std + params.std_eps)
    return adv


class GRPO:
    """The ``grpo`` algorithm (module docstring)."""

    def __init__(self, cfg, *, gather=None, ctx=None):
        self.cfg = cfg
        # gather(tensor) -> every process's values concatenated (multi-process batch std)
        self.gather = gather

    def online_models(self, policy) -> list:
        from posttrain.training import OnlineModel, OptimizerSettings

        cfg = self.cfg
        return [OnlineModel("policy", policy.model, OptimizerSettings.from_config(cfg),
                            loss_fn=make_policy_loss(cfg), count_items=count_items(cfg.loss_aggregation),
                            save=policy.save)]

    def frozen_models(self) -> dict[str, Any]:
        return {}

    def sample_fields(self, rollouts: ScoredRollouts, models: Mapping[str, Any]) -> dict[str, list[torch.Tensor]]:
        cfg = self.cfg
        batch = None
        if cfg.scale_rewards == "batch" and self.gather is not None:
            batch = self.gather(rollouts.rewards)
        adv = group_advantages(rollouts.rewards, rollouts.group_size, cfg.advantage, cfg.scale_rewards, batch)
        return {"advantages": [torch.full((len(r),), float(a)) for r, a in zip(rollouts.response_ids, adv.tolist())]}


@register_algorithm("grpo")
def make_grpo(cfg, **kwargs) -> GRPO:
    return GRPO(cfg, **kwargs)
