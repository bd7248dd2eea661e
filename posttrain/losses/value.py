"""PPO's value-model loss and its diagnostics, as pure functions of per-token values.

With ``V`` the value model's current prediction, ``V_old`` its prediction at rollout time,
``R`` the returns (``posttrain.rl.advantages.gae_advantages``) and ``c`` = ``clip``:

    V_clip = V_old + clip(V - V_old, -c, c)
    loss_t = 0.5 * max((V - R)^2, (V_clip - R)^2)

(PPO's clipped value loss as open-instruct's and Tülu 3's: ``cliprange_value`` 0.2; the
0.5 is theirs too). The caller aggregates ``per_token`` with
``posttrain.losses.policy.aggregate`` (Tülu 3: a token mean) and multiplies by ``vf_coef``
(Tülu 3: 0.1). With a separate value model and its own AdamW, ``vf_coef`` barely matters
(Adam's update is invariant to a constant loss scale, up to its epsilon); it is kept for
parity with the recipes that set it.

Statistics (``value/*``, over loss tokens): ``clip_frac`` (the clipped branch is the larger,
so it sets the gradient), ``loss`` (token mean), ``pred_mean``, ``returns_mean``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.rl.stats import Metrics, masked_var

VF_COEF = 0.1
"""Tülu 3 8B's (and open-instruct's) weight of the value loss."""
VALUE_CLIP = 0.2
"""Tülu 3 8B's ``cliprange_value``."""


@dataclass
class ValueLoss:
    per_token: torch.Tensor
    """``(B, T)`` per-token loss (before ``vf_coef``), 0 on masked tokens."""
    metrics: Metrics


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float | None = VALUE_CLIP) -> ValueLoss:
    """The clipped value loss per token (module docstring); ``clip=None`` is the plain
    ``0.5 (V - R)^2``. ``values`` carries the gradient; ``old_values`` and ``returns`` are
    detached. All ``(B, T)``."""
    if not values.shape == old_values.shape == returns.shape == mask.shape:
        raise ValueError(f"value loss: values {tuple(values.shape)}, old values {tuple(old_values.shape)}, "
                         f"returns {tuple(returns.shape)} and mask {tuple(mask.shape)} must have one shape")
    m = mask.bool()
    v = values.float().masked_fill(~m, 0.0)
    old = old_values.detach().float().masked_fill(~m, 0.0)
    ret = returns.detach().float().masked_fill(~m, 0.0)
    plain = (v - ret) ** 2
    stats = Metrics()
    if clip is None:
        loss = 0.5 * plain
        stats.add("value/clip_frac", 0.0, m.sum())
    else:
        clipped = old + (v - old).clamp(-clip, clip)
        other = (clipped - ret) ** 2
        loss = 0.5 * torch.maximum(plain, other)
        stats.mean("value/clip_frac", (other > plain).float(), m)
    loss = loss.masked_fill(~m, 0.0)
    stats.mean("value/loss", loss, m)
    stats.mean("value/pred_mean", v, m)
    stats.mean("value/returns_mean", ret, m)
    return ValueLoss(loss, stats)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var(R - V) / Var(R)`` over the unmasked tokens of the batch (0-d tensor): 1
    when the values predict the returns exactly, 0 when no better than their mean, below
    0 when worse. NaN when the returns do not vary."""
    v, r = values.detach().float(), returns.detach().float()
    var_r = masked_var(r, mask)
    if float(var_r) == 0.0:
        return torch.tensor(float("nan"), device=v.device)
    return 1.0 - masked_var(r - v, mask) / var_r
