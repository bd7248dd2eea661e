"""Rollout correction: the engine that sampled a response (vLLM, or transformers at another
precision) computes slightly different log-probs than the trainer does for the same
tokens, so the samples are a little off-policy even on the first optimizer pass. With
``rho = pi_trainer / pi_engine = exp(trainer_logprob - engine_logprob)`` per token:

=================  ========================================================================
``none``           nothing changes; the mismatch is only measured
``tis``            truncated importance sampling (Yao et al. 2025, "Your efficient RL
                   framework secretly brings you off-policy RL training"): each token's
                   policy loss is multiplied by ``min(rho, cap)`` (detached)
``mask_token``     tokens with ``rho`` outside ``[lower, cap]`` leave the loss
``mask_sequence``  responses whose ratio leaves ``[lower, cap]`` leave the loss; the
                   sequence ratio is the geometric mean of its token ratios,
                   ``exp(mean_t log rho_t)`` (verl's ``geometric`` level; the plain product
                   ``exp(sum_t log rho_t)`` with ``sequence_ratio="product"``)
=================  ========================================================================

``lower`` defaults to ``1 / cap``; ``cap`` defaults to 2 (the TIS paper's C = 2; verl's
default threshold 2.0). ``trainer_logprobs`` are the trainer's log-probs of the sampled
tokens before any update of this batch (the "old" log-probs), so the correction is fixed
for all the batch's optimizer passes.

Statistics (``mismatch/*``, over the unmasked tokens), with the tokens sampled from the
engine: ``k1`` the mean of ``-log rho`` and ``k3`` the mean of ``rho - 1 - log rho``
(Schulman's unbiased estimators of KL(engine || trainer); k3 is never negative),
``abs_diff_max`` the largest ``|log rho|``, ``ratio_mean/min/max``, and
``corrected_frac``: the share of tokens truncated or masked (``mask_sequence``: of
responses masked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from posttrain.rl.stats import Metrics, masked_mean

CorrectionMode = Literal["none", "tis", "mask_token", "mask_sequence"]
MAX_LOG_RATIO = 20.0
"""Log-ratios are clamped to +-20 before ``exp`` so one wild token cannot overflow."""


@dataclass
class Correction:
    weights: torch.Tensor
    """``(B, T)`` float: multiply each token's policy loss by this (``tis``; ones
    otherwise), detached, 0 on masked tokens."""
    mask: torch.Tensor
    """``(B, T)`` bool: the loss mask after masking (the input mask for ``none``/``tis``)."""
    metrics: Metrics
    """The mismatch statistics (module docstring)."""


def rollout_correction(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor,
                       mode: CorrectionMode = "none", cap: float = 2.0, lower: float | None = None,
                       sequence_ratio: Literal["geometric", "product"] = "geometric") -> Correction:
    """Weights and mask that correct for the trainer/engine mismatch, and its statistics;
    all inputs ``(B, T)``, padding masked (module docstring)."""
    if not trainer_logprobs.shape == engine_logprobs.shape == mask.shape:
        raise ValueError(f"log-probs and mask must have the same shape, got {tuple(trainer_logprobs.shape)}, "
                         f"{tuple(engine_logprobs.shape)} and {tuple(mask.shape)}")
    if cap <= 1:
        raise ValueError(f"cap must be > 1, got {cap}")
    lower = 1.0 / cap if lower is None else float(lower)
    mask = mask.bool()
    with torch.no_grad():
        log_rho = (trainer_logprobs.float() - engine_logprobs.float()).masked_fill(~mask, 0.0)
        rho = log_rho.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
        stats = Metrics()
        stats.mean("mismatch/k1", -log_rho, mask)
        stats.mean("mismatch/k3", torch.expm1(log_rho.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)) - log_rho, mask)
        stats.max("mismatch/abs_diff_max", log_rho.abs(), mask)
        stats.mean("mismatch/ratio_mean", rho, mask)
        stats.max("mismatch/ratio_max", rho, mask)
        stats.min("mismatch/ratio_min", rho, mask)
        weights = mask.float()
        if mode == "none":
            stats.add("mismatch/corrected_frac", 0.0, mask.sum())
        elif mode == "tis":
            weights = rho.clamp(max=cap) * mask
            stats.mean("mismatch/corrected_frac", (rho > cap).float(), mask)
        elif mode == "mask_token":
            keep = (rho >= lower) & (rho <= cap)
            stats.mean("mismatch/corrected_frac", (~keep).float(), mask)
            mask = mask & keep
            weights = mask.float()
        elif mode == "mask_sequence":
            has = mask.any(dim=1)
            seq_log = log_rho.sum(dim=1) if sequence_ratio == "product" else masked_mean(log_rho, mask, dim=1)
            seq = seq_log.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
            keep = (seq >= lower) & (seq <= cap)
            stats.mean("mismatch/corrected_frac", (~keep).float(), has)
            mask = mask & keep.unsqueeze(1)
            weights = mask.float()
        else:
            raise ValueError(f"rollout correction must be none, tis, mask_token or mask_sequence, got {mode!r}")
    return Correction(weights, mask, stats)
