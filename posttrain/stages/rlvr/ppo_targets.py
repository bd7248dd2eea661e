"""PPO's training targets for one rollout batch, a pure function of padded tensors: the
per-token rewards, GAE advantages and value targets (returns), as Tülu 3's RLVR computes
them (open-instruct ``ppo_vllm_thread_ray_gtrl.py``).

With ``B`` responses of up to ``T`` tokens (zero-padded on the right):

1. the KL to the reference on every sampled token, from the rollout-time policy's
   log-probs and the reference's (``kl_estimator`` k1/k2/k3, ``posttrain.losses.kl``),
   when ``kl_in_reward`` and ``beta > 0`` (Tülu 3: k1, beta 0.05);
2. per-token rewards (``posttrain.rl.rewards.token_rewards``): ``-beta x KL`` on every
   response token and the sequence reward (verifier score x multiplier, or the non-stop
   penalty, already applied by the rollout source) on the last one;
3. GAE over the response tokens (``posttrain.rl.advantages.gae_advantages``; gamma 1, lam
   0.95 in Tülu 3), returns = advantages + values;
4. advantages whitened over the batch's trained tokens (Tülu 3: yes).

Returns and rollout-time values are the value loss's targets; the advantages the policy
loss's. Statistics of the batch (logged per step): ``value/explained_variance`` (of the
returns by the rollout-time values), ``value/rollout_mean``, ``value/returns_mean``,
``reward/kl_penalty`` (the mean summed ``-beta x KL`` per response), ``reward/total``
(the mean summed per-token reward: open-instruct's ``rlhf_reward``) and
``advantages/raw_std`` (before whitening).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.losses.kl import kl_estimate
from posttrain.losses.value import explained_variance
from posttrain.rl.advantages import gae_advantages, whiten
from posttrain.rl.rewards import reward_totals, token_rewards
from posttrain.rl.stats import masked_mean, masked_var


@dataclass
class PPOTargets:
    advantages: torch.Tensor
    """``(B, T)`` per-token advantages (whitened when asked), 0 on padding."""
    returns: torch.Tensor
    """``(B, T)`` value targets, 0 on padding."""
    rewards: torch.Tensor
    """``(B, T)`` the per-token rewards the advantages came from."""
    metrics: dict[str, float]


def ppo_targets(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, trained: torch.Tensor | None = None,
                logprobs: torch.Tensor | None = None, ref_logprobs: torch.Tensor | None = None, beta: float = 0.0,
                kl_estimator: str = "k1", kl_in_reward: bool = True, gamma: float = 1.0, lam: float = 0.95,
                whiten_advantages: bool = True) -> PPOTargets:
    """The batch's targets (module docstring). ``rewards`` ``(B,)`` sequence rewards;
    ``values``, ``logprobs`` (the sampling policy's, before this step's updates) and
    ``ref_logprobs`` ``(B, T)``; ``mask`` ``(B, T)`` the responses' real tokens;
    ``trained`` ``(B,)`` the responses that enter the loss (whitening and statistics run
    over their tokens only; default all). Without reference log-probs, or with
    ``kl_in_reward=False`` (the KL goes in the loss), the reward holds no KL term."""
    m = mask.bool()
    loss_mask = m if trained is None else m & trained.bool().unsqueeze(1)
    kl = None
    if kl_in_reward and beta > 0 and ref_logprobs is not None:
        if logprobs is None:
            raise ValueError("the KL penalty in the reward needs the sampling policy's log-probs")
        kl = kl_estimate(logprobs, ref_logprobs, kl_estimator, m)
    per_token = token_rewards(rewards, m, kl, beta)
    adv, returns = gae_advantages(per_token, values, m, gamma, lam)
    raw_std = masked_var(adv, loss_mask).sqrt() if int(loss_mask.sum()) > 1 else torch.tensor(0.0)
    if whiten_advantages and int(loss_mask.sum()) > 1:
        adv = whiten(adv, loss_mask)  # 0 outside the trained tokens
    rows = loss_mask.any(dim=1)
    metrics = {
        "value/explained_variance": float(explained_variance(values, returns, loss_mask)),
        "value/rollout_mean": float(masked_mean(values.float(), loss_mask)),
        "value/returns_mean": float(masked_mean(returns, loss_mask)),
        "reward/kl_penalty": float(reward_totals(per_token - token_rewards(rewards, m), m)[rows].mean())
        if bool(rows.any()) else 0.0,
        "reward/total": float(reward_totals(per_token, m)[rows].mean()) if bool(rows.any()) else 0.0,
        "advantages/raw_std": float(raw_std),
    }
    return PPOTargets(adv, returns, per_token, metrics)
