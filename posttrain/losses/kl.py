"""Per-token KL estimators between the policy and a reference (Schulman, "Approximating
KL divergence", 2020), for the tokens the policy sampled.

With ``log_r = ref_logprob - logprob`` at a sampled token (``r = pi_ref / pi``):

====  =========================  ===========================================================
k1    ``-log_r``                 unbiased, high variance, can be negative per token
k2    ``log_r ** 2 / 2``         biased (low for close policies), low variance, >= 0
k3    ``exp(log_r) - 1 - log_r``  unbiased, low variance, >= 0 (DeepSeekMath's GRPO; OLMo 2)
====  =========================  ===========================================================

Each returns ``(B, T)`` with 0 on masked positions; the coefficient (``beta``) is applied by
the caller, in the reward (PPO, ``posttrain.rl.rewards.token_rewards``) or in the loss
(GRPO, ``PolicyLossInputs.kl``). Gradients flow through ``logprob`` when it has them.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]


def k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


def k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2


def k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r


_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"k1": k1, "k2": k2, "k3": k3}


def kl_estimator_names() -> list[str]:
    return sorted(_ESTIMATORS)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k3",
                mask: torch.Tensor | None = None, clamp: float | None = None) -> torch.Tensor:
    """Per-token KL estimate ``(B, T)`` of the policy from the reference, 0 where ``mask``
    is false. ``clamp`` bounds each value to ``[-clamp, clamp]`` (verl clamps k3 to 10 so
    one token the reference finds nearly impossible cannot dominate); default: exact."""
    try:
        fn = _ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown KL estimator {estimator!r} (known: {', '.join(kl_estimator_names())})") from None
    out = fn(logprobs.float(), ref_logprobs.float())
    if clamp is not None:
        out = out.clamp(-clamp, clamp)
    if mask is not None:
        out = out * mask.to(out.dtype)
    return out
