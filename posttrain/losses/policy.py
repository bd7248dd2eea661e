"""Policy-gradient losses (GRPO, PPO and their variants) as pure functions of per-token
log-probs, by name (``@register_policy_loss``), and the loss aggregations.

A loss takes :class:`PolicyLossInputs` (``(B, T)`` tensors: the current log-probs with
gradient, the sampling policy's log-probs, per-token advantages, the loss mask, optional
rollout-correction weights and an optional per-token KL to the reference) and returns
:class:`PolicyLoss`: a per-token loss (0 on masked tokens) and its statistics. An
*aggregation* then turns the per-token loss into ``(loss_sum, n_items)`` for the trainer,
which divides the optimizer step's summed losses by its summed items.

With ``rho_t = exp(logprob_t - old_logprob_t)``, ``A_t`` the advantage, ``eps_lo/eps_hi``
= ``clip_low/clip_high``:

============  ==============================================================================
``clipped``   ``max(-A rho, -A clip(rho, 1 - eps_lo, 1 + eps_hi))`` per token (PPO; GRPO;
              DAPO's clip-higher with ``clip_high`` 0.28). ``dual_clip`` c (> 1) also caps
              the loss of a negative-advantage token at ``-A c`` (Ye et al. 2020)
``gspo``      the same with one ratio per response, ``s = exp(mean_t(logprob - old))``
              (GSPO, Zheng et al. 2025); its value is ``s`` on every token while each
              token's gradient is ``s * grad logprob_t`` (GSPO-token's form, as verl), so
              every aggregation applies. GSPO's paper clips at 3e-4 / 4e-4
``cispo``     ``-sg(min(rho, cispo_max_weight)) A logprob`` (CISPO, MiniMax-M1 2025): the
              clipped, detached ratio weights a REINFORCE term, so clipped tokens keep a
              gradient; ``cispo_max_weight`` 5 (ScaleRL's eps_max, TRL's recommendation)
============  ==============================================================================

Then, per token, ``loss = weight_t x loss_t + kl_coef x kl_t`` where ``weight`` is the
rollout-correction weight (``posttrain.rl.correction``) and ``kl`` the estimate to the
reference (``posttrain.losses.kl``) when the KL is in the loss (GRPO).

Aggregations, as ``(sum, count)`` so that splitting a step into micro-batches or
processes changes nothing (``sum(sums) / sum(counts)`` is the step's loss):

===========================  ===============================================  ==============
name                         sum                                              count
===========================  ===============================================  ==============
``token_mean`` (DAPO)        sum of all response tokens' losses                tokens
``seq_mean_token_mean``      sum over responses of each one's token mean       responses with
(GRPO)                                                                        >= 1 token
``seq_mean_token_sum_norm``  sum over responses of (token sum / ``L``), ``L``  responses (all
(Dr. GRPO)                   the constant maximum response length             rows)
===========================  ===============================================  ==============

Statistics (``policy/*``, over loss tokens): ``clip_frac_low`` (ratio below the lower clip
with ``A < 0``: the lower clip is active), ``clip_frac_high`` (above the upper clip with
``A > 0``; ``cispo``: ratio above the cap), ``dual_clip_frac``, ``approx_kl`` (the k3
estimate of KL(old || current), >= 0), ``ratio_mean/min/max``, ``kl`` (mean KL term, when
given).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from posttrain.rl.stats import Metrics, masked_mean, masked_sum

LossAggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
AGGREGATIONS: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
MAX_LOG_RATIO = 20.0
"""Log-ratios are clamped to +-20 before ``exp`` (as verl) so a wild token cannot make
``inf``; such a token is far outside any clip range."""


@dataclass
class PolicyLossInputs:
    """``(B, T)`` tensors over response tokens, padded; advantages may be ``(B,)``."""

    logprobs: torch.Tensor
    """Log-probs of the sampled tokens under the policy being trained (with gradient)."""
    old_logprobs: torch.Tensor
    """The same under the policy that sampled them (before this batch's updates), detached."""
    advantages: torch.Tensor
    """Per-token advantages (``posttrain.rl.advantages``), or one per response."""
    mask: torch.Tensor
    """True on the tokens that enter the loss."""
    weights: torch.Tensor | None = None
    """Per-token multipliers of the policy term (rollout correction's ``weights``)."""
    kl: torch.Tensor | None = None
    """Per-token KL estimate to the reference, with gradient, when the KL is in the loss."""


@dataclass(frozen=True)
class PolicyLossParams:
    """The knobs of the family; each loss reads the ones it uses."""

    clip_low: float = 0.2
    """``clipped``/``gspo``: the ratio's lower clip is ``1 - clip_low`` (PPO/GRPO: 0.2)."""
    clip_high: float = 0.2
    """``clipped``/``gspo``: the upper clip is ``1 + clip_high`` (DAPO: 0.28)."""
    dual_clip: float | None = None
    """``clipped``/``gspo``: with c > 1, a negative-advantage token's loss is at most
    ``-A c`` (dual-clip PPO; verl's ``clip_ratio_c`` 3). None: off."""
    cispo_max_weight: float = 5.0
    """``cispo``: the cap of the detached ratio (ScaleRL / TRL: 5)."""
    kl_coef: float = 0.0
    """Weight of ``kl`` in the loss (GRPO's beta; OLMo 2 1B: 0.01)."""


@dataclass
class PolicyLoss:
    per_token: torch.Tensor
    """``(B, T)`` per-token loss, 0 on masked tokens; aggregate it with :func:`aggregate`."""
    metrics: Metrics
    """Statistics over the loss tokens (module docstring)."""


PolicyLossFn = Callable[[PolicyLossInputs, PolicyLossParams], PolicyLoss]
_LOSSES: dict[str, PolicyLossFn] = {}


def register_policy_loss(name: str):
    """Decorator: make ``fn(inputs: PolicyLossInputs, params: PolicyLossParams) ->
    PolicyLoss`` available as ``policy_loss: <name>`` in a recipe."""

    def wrap(fn: PolicyLossFn) -> PolicyLossFn:
        _LOSSES[name] = fn
        return fn

    return wrap


def get_policy_loss(name: str) -> PolicyLossFn:
    try:
        return _LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown policy loss {name!r} (known: {', '.join(sorted(_LOSSES))})") from None


def policy_loss_names() -> list[str]:
    return sorted(_LOSSES)


# ---------------------------------------------------------------------------- ratios
def _clean(x: PolicyLossInputs) -> PolicyLossInputs:
    """Zero every input on masked positions first: padding may hold anything (``-inf``
    log-probs), and ``nan * 0`` would still be ``nan`` in the loss or its gradient."""
    shape = tuple(x.mask.shape)
    for name in ("logprobs", "old_logprobs", "weights", "kl"):
        t = getattr(x, name)
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"policy loss: {name} has shape {tuple(t.shape)}, the mask {shape}")
    if tuple(x.advantages.shape) not in (shape, shape[:1]):
        raise ValueError(f"policy loss: advantages have shape {tuple(x.advantages.shape)}, expected {shape} or "
                         f"{shape[:1]}")
    off = ~x.mask.bool()

    def z(t):
        if t is None:
            return None
        t = t.float()
        return t.masked_fill(off, 0.0) if t.dim() == 2 else t

    return PolicyLossInputs(z(x.logprobs), z(x.old_logprobs).detach(), z(x.advantages).detach(), x.mask.bool(),
                            None if x.weights is None else z(x.weights).detach(), z(x.kl))


def token_log_ratio(x: PolicyLossInputs) -> torch.Tensor:
    """``logprob - old_logprob`` per token, clamped, 0 on masked tokens."""
    diff = (x.logprobs.float() - x.old_logprobs.float().detach()).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return diff * x.mask.to(diff.dtype)


def sequence_log_ratio(x: PolicyLossInputs) -> torch.Tensor:
    """GSPO's ratio in log space, token-shaped ``(B, T)``: its value is each response's
    mean token log-ratio, its gradient that of the token's own log-prob."""
    per_token = token_log_ratio(x)
    seq = masked_mean(per_token, x.mask, dim=1).detach().unsqueeze(1)
    logp = x.logprobs.float()
    return (logp - logp.detach() + seq).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


def _advantages(x: PolicyLossInputs) -> torch.Tensor:
    a = x.advantages.detach().float()
    return a.unsqueeze(1).expand_as(x.logprobs) if a.dim() == 1 else a


def _finish(policy_term: torch.Tensor, x: PolicyLossInputs, p: PolicyLossParams, stats: Metrics,
            log_ratio: torch.Tensor) -> PolicyLoss:
    """Apply correction weights, add the KL term, mask; record the shared statistics."""
    mask = x.mask.bool()
    if x.weights is not None:
        policy_term = policy_term * x.weights.detach().to(policy_term.dtype)
    loss = policy_term
    if x.kl is not None:
        kl = x.kl.float()
        stats.mean("policy/kl", kl, mask)
        if p.kl_coef:
            loss = loss + p.kl_coef * kl
    ratio = log_ratio.detach().exp()
    lr = log_ratio.detach()
    stats.mean("policy/approx_kl", torch.expm1(lr) - lr, mask)  # k3, the tokens sampled from the old policy
    stats.mean("policy/ratio_mean", ratio, mask)
    stats.max("policy/ratio_max", ratio, mask)
    stats.min("policy/ratio_min", ratio, mask)
    return PolicyLoss(loss.masked_fill(~mask, 0.0), stats)


def _clipped_surrogate(x: PolicyLossInputs, p: PolicyLossParams, log_ratio: torch.Tensor) -> PolicyLoss:
    a, mask = _advantages(x), x.mask.bool()
    ratio = log_ratio.exp()
    lo, hi = 1.0 - p.clip_low, 1.0 + p.clip_high
    unclipped, clipped = -a * ratio, -a * ratio.clamp(lo, hi)
    loss = torch.maximum(unclipped, clipped)
    stats = Metrics()
    r = ratio.detach()
    stats.mean("policy/clip_frac_low", ((r < lo) & (a < 0)).float(), mask)
    stats.mean("policy/clip_frac_high", ((r > hi) & (a > 0)).float(), mask)
    if p.dual_clip is not None:
        if p.dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1, got {p.dual_clip}")
        cap = -a * p.dual_clip
        capped = (a < 0) & (loss > cap)
        stats.mean("policy/dual_clip_frac", capped.float(), mask)
        loss = torch.where(a < 0, torch.minimum(loss, cap), loss)
    return _finish(loss, x, p, stats, log_ratio)


@register_policy_loss("clipped")
def clipped(x: PolicyLossInputs, p: PolicyLossParams) -> PolicyLoss:
    x = _clean(x)
    return _clipped_surrogate(x, p, token_log_ratio(x))


@register_policy_loss("gspo")
def gspo(x: PolicyLossInputs, p: PolicyLossParams) -> PolicyLoss:
    x = _clean(x)
    return _clipped_surrogate(x, p, sequence_log_ratio(x))


@register_policy_loss("cispo")
def cispo(x: PolicyLossInputs, p: PolicyLossParams) -> PolicyLoss:
    x = _clean(x)
    a, mask = _advantages(x), x.mask.bool()
    log_ratio = token_log_ratio(x)
    ratio = log_ratio.detach().exp()
    weight = ratio.clamp(max=p.cispo_max_weight)
    stats = Metrics()
    stats.mean("policy/clip_frac_high", (ratio > p.cispo_max_weight).float(), mask)
    return _finish(-weight * a * x.logprobs.float(), x, p, stats, log_ratio)


# ---------------------------------------------------------------------------- aggregation
def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: LossAggregation = "token_mean",
              max_response_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss_sum, n_items)`` of a micro-batch's per-token loss (module docstring's
    table); ``n_items`` equals :func:`aggregation_count` of the mask.
    ``seq_mean_token_sum_norm`` needs ``max_response_length`` (the sampling limit)."""
    m = mask.bool()
    if mode == "token_mean":
        return masked_sum(per_token, m), m.sum()
    if mode == "seq_mean_token_mean":
        n = m.sum(dim=1)
        per_seq = masked_sum(per_token, m, dim=1) / n.clamp(min=1).to(per_token.dtype)
        return per_seq.sum(), (n > 0).sum()
    if mode == "seq_mean_token_sum_norm":
        if not max_response_length or max_response_length < 1:
            raise ValueError("seq_mean_token_sum_norm needs max_response_length (the sampling limit)")
        return masked_sum(per_token, m) / max_response_length, torch.tensor(m.shape[0], device=m.device)
    raise ValueError(f"unknown loss aggregation {mode!r} (known: {', '.join(AGGREGATIONS)})")


def aggregation_count(mask: torch.Tensor, mode: LossAggregation = "token_mean") -> int:
    """The items a micro-batch's mask counts under ``mode``, computable before the forward
    pass (for the trainer's ``count_items``)."""
    m = mask.bool()
    if mode == "token_mean":
        return int(m.sum())
    if mode == "seq_mean_token_mean":
        return int(m.any(dim=1).sum())
    if mode == "seq_mean_token_sum_norm":
        return int(m.shape[0])
    raise ValueError(f"unknown loss aggregation {mode!r} (known: {', '.join(AGGREGATIONS)})")


@dataclass
class AggregatedLoss:
    loss_sum: torch.Tensor
    """Differentiable 0-d sum for the trainer."""
    n_items: torch.Tensor
    """What ``loss_sum`` is to be divided by, summed over the optimizer step."""
    metrics: Metrics


def policy_loss(name: str, inputs: PolicyLossInputs, params: PolicyLossParams = PolicyLossParams(),
                aggregation: LossAggregation = "token_mean", max_response_length: int | None = None
                ) -> AggregatedLoss:
    """One call for a micro-batch: the loss ``name`` on ``inputs``, aggregated. Wrap the
    result as ``LossOutput(out.loss_sum, out.n_items, ...)`` for the trainer."""
    out = get_policy_loss(name)(inputs, params)
    total, count = aggregate(out.per_token, inputs.mask, aggregation, max_response_length)
    return AggregatedLoss(total, count, out.metrics)
