"""Advantage estimators, by name (``@register_advantage``, as verl's registry), plus
masked whitening.

Outcome estimators (``grpo``, ``rloo``) take one reward per response; the responses to one
prompt form a *group* of ``group_size`` consecutive rows (the order ``Rollouts`` returns:
``n`` samples per prompt, contiguous). ``gae`` takes per-token rewards and values (PPO).
Every estimator returns per-token advantages ``(B, T)``, 0 on padding, so any policy loss
takes any estimator's output.

With ``r`` a group's rewards, ``mean``/``std`` over that group (std with Bessel's
correction, as TRL's and verl's ``torch.std``) and ``eps`` = ``AdvantageParams.std_eps``:

==========  ===========================================================================
``grpo``    ``A_i = (r_i - mean(r)) / (s + eps)``; ``s`` = the group's std
            (``scale_rewards: group``, DeepSeekMath), the std of all rewards of the batch
            (``batch``), or ``s + eps = 1`` (``none``, Dr. GRPO)
``rloo``    ``A_i = r_i - (sum(r) - r_i) / (G - 1)``: the mean of the *other* samples as
            baseline (Ahmadian et al. 2024), = ``G/(G-1) (r_i - mean(r))``
``gae``     ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``
            over the response tokens (``V`` after the last token is 0: the episode ends);
            returns ``R_t = A_t + V_t`` are the value targets; then advantages are
            whitened over the batch's tokens (Tülu 3: ``gamma 1, lam 0.95``, whitened)
==========  ===========================================================================

``std_eps`` defaults to 1e-4 (TRL). open-instruct's GRPO divides by the population std
plus 1e-8 and verl adds 1e-6; the difference matters only for near-constant groups, which
give ~0 advantages either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from posttrain.rl.stats import masked_mean, masked_var

ScaleRewards = Literal["group", "batch", "none"]


@dataclass
class AdvantageInputs:
    """What an estimator reads. Shapes: B responses, T response tokens (padded)."""

    rewards: torch.Tensor
    """``(B,)`` sequence rewards (``grpo``, ``rloo``) or ``(B, T)`` per-token rewards
    (``gae``; ``posttrain.rl.rewards.token_rewards``)."""
    mask: torch.Tensor
    """``(B, T)`` true on the response tokens that enter the loss."""
    group_size: int = 1
    """Responses per prompt; rows ``[k*G, (k+1)*G)`` answer the same prompt."""
    values: torch.Tensor | None = None
    """``(B, T)`` the value model's estimate at each response token, from the rollout
    (``gae`` only)."""


@dataclass(frozen=True)
class AdvantageParams:
    """The knobs of the estimators; each reads the ones it uses."""

    scale_rewards: ScaleRewards = "group"
    """``grpo``: divide by the group's std, the batch's std, or nothing."""
    std_eps: float = 1e-4
    """``grpo``: added to the std before dividing (TRL's 1e-4)."""
    gamma: float = 1.0
    """``gae``: discount (Tülu 3: 1)."""
    lam: float = 0.95
    """``gae``: GAE's lambda (Tülu 3: 0.95)."""
    whiten: bool = True
    """``gae``: whiten the advantages over the batch's response tokens (Tülu 3: yes)."""


@dataclass
class Advantages:
    advantages: torch.Tensor
    """``(B, T)`` per-token advantages, 0 on padding, without gradient."""
    returns: torch.Tensor | None = None
    """``(B, T)`` value targets (``gae``), else None."""


AdvantageFn = Callable[[AdvantageInputs, AdvantageParams], Advantages]


@dataclass(frozen=True)
class AdvantageSpec:
    name: str
    fn: AdvantageFn
    needs_values: bool
    """True when the estimator needs a value model (``gae``)."""
    token_rewards: bool
    """True when ``rewards`` must be per token ``(B, T)``, false for ``(B,)``."""


_ESTIMATORS: dict[str, AdvantageSpec] = {}


def register_advantage(name: str, *, needs_values: bool = False, token_rewards: bool = False):
    """Decorator: make ``fn(inputs: AdvantageInputs, params: AdvantageParams) ->
    Advantages`` available as ``advantage: <name>`` in a recipe."""

    def wrap(fn: AdvantageFn) -> AdvantageFn:
        _ESTIMATORS[name] = AdvantageSpec(name, fn, needs_values, token_rewards)
        return fn

    return wrap


def get_advantage(name: str) -> AdvantageSpec:
    try:
        return _ESTIMATORS[name]
    except KeyError:
        raise KeyError(f"unknown advantage estimator {name!r} (known: {', '.join(sorted(_ESTIMATORS))})") from None


def advantage_names() -> list[str]:
    return sorted(_ESTIMATORS)


def compute_advantages(name: str, inputs: AdvantageInputs, params: AdvantageParams = AdvantageParams()
                       ) -> Advantages:
    """Run the estimator ``name`` (checks that it gets values when it needs them)."""
    spec = get_advantage(name)
    if spec.needs_values and inputs.values is None:
        raise ValueError(f"advantage estimator {name!r} needs values (a value model)")
    want = 2 if spec.token_rewards else 1
    if inputs.rewards.dim() != want:
        raise ValueError(f"advantage estimator {name!r} takes {'(B, T) per-token' if want == 2 else '(B,)'} "
                         f"rewards, got shape {tuple(inputs.rewards.shape)}")
    with torch.no_grad():
        return spec.fn(inputs, params)


# ---------------------------------------------------------------------------- pieces
def grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(B,)`` -> ``(B / G, G)``: one row per prompt."""
    if group_size < 1 or rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: ScaleRewards = "group",
                    std_eps: float = 1e-4) -> torch.Tensor:
    """``(B,)`` GRPO advantages: reward minus its group's mean, divided by the group's
    std, the batch's std, or nothing (module docstring). Needs ``group_size >= 2``."""
    if group_size < 2:
        raise ValueError("grpo needs at least 2 responses per prompt")
    g = grouped(rewards.float(), group_size)
    centered = (g - g.mean(dim=1, keepdim=True)).reshape(-1)
    if scale_rewards == "none":
        return centered
    if scale_rewards == "group":
        std = g.std(dim=1, keepdim=True).expand_as(g).reshape(-1)
    elif scale_rewards == "batch":
        std = rewards.float().std()
    else:
        raise ValueError(f"scale_rewards must be group, batch or none, got {scale_rewards!r}")
    denom = std + std_eps
    # A constant group has std 0; with std_eps 0 its (zero) advantages stay 0, not NaN.
    return torch.where(denom > 0, centered / denom.clamp(min=torch.finfo(centered.dtype).tiny), centered)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(B,)`` RLOO advantages: reward minus the mean reward of the group's other
    responses. Needs ``group_size >= 2``."""
    if group_size < 2:
        raise ValueError("rloo needs at least 2 responses per prompt")
    g = grouped(rewards.float(), group_size)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - baseline).reshape(-1)


def to_tokens(seq_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` -> ``(B, T)``: each response's value on all its tokens, 0 on padding."""
    return seq_values.unsqueeze(1).to(torch.float32) * mask.to(torch.float32)


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over each row's unmasked tokens, right to left.
    Returns ``(advantages, returns)``, both ``(B, T)`` and 0 on masked positions.

    Masked positions are skipped, not treated as steps: the token before a masked stretch
    bootstraps from the next *unmasked* token's value (and after the last one from 0,
    the end of the episode), so right padding and holes in the mask both work."""
    m = mask.to(torch.float32)
    r, v = rewards.float() * m, values.float() * m
    B, T = r.shape
    next_value = torch.zeros(B, dtype=torch.float32, device=r.device)
    next_adv = torch.zeros(B, dtype=torch.float32, device=r.device)
    adv = torch.zeros_like(r)
    # A Python loop over time, as every peer: T is the response length (<= a few thousand)
    # and each step is a B-wide vector operation.
    for t in range(T - 1, -1, -1):
        delta = r[:, t] + gamma * next_value - v[:, t]
        a = delta + gamma * lam * next_adv
        on = m[:, t]
        adv[:, t] = a * on
        next_adv = a * on + next_adv * (1 - on)
        next_value = v[:, t] * on + next_value * (1 - on)
    return adv, (adv + v) * m


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the unmasked entries of the whole batch (var
    with Bessel's correction; ``shift_mean=False`` adds the mean back, for rewards), 0 on
    masked entries. As open-instruct's and TRL's ``masked_whiten``."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(out.dtype)


# ---------------------------------------------------------------------------- registry
@register_advantage("grpo")
def _grpo(x: AdvantageInputs, p: AdvantageParams) -> Advantages:
    return Advantages(to_tokens(grpo_advantages(x.rewards, x.group_size, p.scale_rewards, p.std_eps), x.mask))


@register_advantage("rloo")
def _rloo(x: AdvantageInputs, p: AdvantageParams) -> Advantages:
    return Advantages(to_tokens(rloo_advantages(x.rewards, x.group_size), x.mask))


@register_advantage("gae", needs_values=True, token_rewards=True)
def _gae(x: AdvantageInputs, p: AdvantageParams) -> Advantages:
    adv, returns = gae_advantages(x.rewards, x.values, x.mask, p.gamma, p.lam)
    if p.whiten:
        adv = whiten(adv, x.mask)
    return Advantages(adv, returns)
