"""The DPO family as pure functions of per-sequence log-probs.

Every loss takes a :class:`PairLogps` (summed policy and reference log-probs of the
chosen and rejected responses, and their token counts) and returns a :class:`PairLoss`
(per-pair loss, chosen and rejected implicit rewards). Losses register by name with
``@register_dpo_loss`` so a recipe's ``loss:`` field picks one, and a new loss is one
decorated function.

Formulas, with ``s_c, s_r`` the summed policy log-probs, ``r_c, r_r`` the reference's,
``L_c, L_r`` the token counts and ``eps`` the label smoothing:

- ``dpo``:      z = (s_c - r_c) - (s_r - r_r)
- ``dpo_norm``: z = (s_c - r_c)/L_c - (s_r - r_r)/L_r        (Tülu 3; beta 5)
- ``simpo``:    z = s_c/L_c - s_r/L_r - gamma_beta_ratio       (no reference)
- ``ipo``:      loss = (z_norm - 1/(2 beta))^2, z_norm as in ``dpo_norm``

and for the sigmoid losses ``loss = -(1-eps) log σ(beta z) - eps log σ(-beta z)``
(conservative DPO), or with ``robust=True`` that difference divided by ``1 - 2 eps``
(Chowdhury et al. 2024, unbiased under label flips with probability eps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass
class PairLogps:
    """Per-pair inputs, each a 1-D tensor of length B (the number of pairs)."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor | None
    ref_rejected: torch.Tensor | None
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


@dataclass
class PairLoss:
    """Per-pair outputs, each of length B. Rewards are detached: they are for metrics."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


@dataclass(frozen=True)
class LossParams:
    """The knobs shared by the family; each loss reads the ones it uses."""

    beta: float = 5.0
    label_smoothing: float = 0.0
    robust: bool = False
    gamma_beta_ratio: float = 0.5


LossFn = Callable[[PairLogps, LossParams], PairLoss]


@dataclass(frozen=True)
class DPOLossSpec:
    name: str
    fn: LossFn
    needs_reference: bool


_LOSSES: dict[str, DPOLossSpec] = {}


def register_dpo_loss(name: str, *, needs_reference: bool = True):
    """Decorator: make ``fn(logps: PairLogps, params: LossParams) -> PairLoss`` available
    as ``loss: <name>`` in a recipe."""

    def wrap(fn: LossFn) -> LossFn:
        _LOSSES[name] = DPOLossSpec(name, fn, needs_reference)
        return fn

    return wrap


def get_dpo_loss(name: str) -> DPOLossSpec:
    try:
        return _LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown DPO loss {name!r} (known: {', '.join(sorted(_LOSSES))})") from None


def dpo_loss_names() -> list[str]:
    return sorted(_LOSSES)


def _smoothed_sigmoid(z: torch.Tensor, beta: float, eps: float, robust: bool) -> torch.Tensor:
    clean, flipped = -F.logsigmoid(beta * z), -F.logsigmoid(-beta * z)
    if robust:
        return ((1 - eps) * clean - eps * flipped) / (1 - 2 * eps)
    return (1 - eps) * clean + eps * flipped


def _need_ref(x: PairLogps, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ref_chosen is None or x.ref_rejected is None:
        raise ValueError(f"DPO loss {name!r} needs reference log-probs")
    return x.ref_chosen, x.ref_rejected


def _per_token(total: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return total / tokens.to(total.dtype).clamp(min=1)


@register_dpo_loss("dpo")
def dpo(x: PairLogps, p: LossParams) -> PairLoss:
    rc, rr = _need_ref(x, "dpo")
    chosen, rejected = x.policy_chosen - rc, x.policy_rejected - rr
    loss = _smoothed_sigmoid(chosen - rejected, p.beta, p.label_smoothing, p.robust)
    return PairLoss(loss, p.beta * chosen.detach(), p.beta * rejected.detach())


def _per_token_logratios(x: PairLogps, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    rc, rr = _need_ref(x, name)
    return _per_token(x.policy_chosen - rc, x.chosen_tokens), _per_token(x.policy_rejected - rr, x.rejected_tokens)


@register_dpo_loss("dpo_norm")
def dpo_norm(x: PairLogps, p: LossParams) -> PairLoss:
    chosen, rejected = _per_token_logratios(x, "dpo_norm")
    loss = _smoothed_sigmoid(chosen - rejected, p.beta, p.label_smoothing, p.robust)
    return PairLoss(loss, p.beta * chosen.detach(), p.beta * rejected.detach())


@register_dpo_loss("simpo", needs_reference=False)
def simpo(x: PairLogps, p: LossParams) -> PairLoss:
    chosen = _per_token(x.policy_chosen, x.chosen_tokens)
    rejected = _per_token(x.policy_rejected, x.rejected_tokens)
    loss = _smoothed_sigmoid(chosen - rejected - p.gamma_beta_ratio, p.beta, p.label_smoothing, p.robust)
    return PairLoss(loss, p.beta * chosen.detach(), p.beta * rejected.detach())


@register_dpo_loss("ipo")
def ipo(x: PairLogps, p: LossParams) -> PairLoss:
    # Per-token log-ratios, as TRL and the IPO authors: summed ones make the squared loss
    # grow with response length.
    chosen, rejected = _per_token_logratios(x, "ipo")
    loss = (chosen - rejected - 1 / (2 * p.beta)) ** 2
    return PairLoss(loss, p.beta * chosen.detach(), p.beta * rejected.detach())


def pair_metrics(out: PairLoss, logps: PairLogps) -> dict[str, torch.Tensor]:
    """Sums over the pairs of a batch (divide by the pair count to report means), so
    micro-batches of different sizes aggregate exactly."""
    margin = out.chosen_rewards - out.rejected_rewards
    return {
        "loss": out.loss.detach().sum(),
        "rewards/chosen": out.chosen_rewards.sum(),
        "rewards/rejected": out.rejected_rewards.sum(),
        "rewards/accuracy": (margin > 0).float().sum(),
        "rewards/margin": margin.sum(),
        "logps/chosen": logps.policy_chosen.detach().sum(),
        "logps/rejected": logps.policy_rejected.detach().sum(),
    }
