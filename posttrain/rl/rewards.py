"""Rewards for RLVR from verifier scores: one number per response (GRPO), or one per
response token (PPO, as Tülu 3).

**Where the weights and the multiplier are applied.** The verifiers' ``Scorer``
(``posttrain.verifiers``) already returns each row's final reward: its verifiers' scores
(each in [0, 1]) combined with the per-verifier ``weights`` and times ``multiplier``
(10 in Tülu 3 and OLMo 2's RLVR). So :func:`sequence_rewards` only turns those results
into a tensor and never applies a weight or multiplier again. For a row with one verifier
(every row of Tülu 3's and OLMo 2's RLVR data) the reward is ``weight x score x
multiplier``; for a row with several, the Scorer takes their weighted mean.

Then, in this order, as open-instruct does:

- :func:`apply_non_stop_penalty`: a response that reached the length limit without a stop
  token gets ``penalty`` instead of its reward (Tülu 3 8B: -10; OLMo 2 1B GRPO: off);
- :func:`drop_truncated`: optionally leave those responses out of the loss entirely
  (DAPO's overlong filtering) by clearing their rows of the loss mask;
- PPO only, :func:`token_rewards`: the reward goes on the last response token and
  ``-beta x KL`` on every response token (or nowhere, when the KL is in the loss).
"""

from __future__ import annotations

from typing import Sequence

import torch

from posttrain.rl.stats import masked_sum


def sequence_rewards(scores: Sequence[float] | Sequence, *, device=None) -> torch.Tensor:
    """The Scorer's results (``ScoreResults``, ``VerifierResult``s or plain floats), one per
    response, as a float32 tensor ``(B,)``. Weights and multiplier are already in them."""
    values = [float(getattr(s, "score", s)) for s in scores]
    return torch.tensor(values, dtype=torch.float32, device=device)


def stopped_mask(finish_reasons: Sequence[str], *, device=None) -> torch.Tensor:
    """``(B,)`` bool: true where a response ended on a stop token (finish reason
    ``stop``), false where it hit the length limit (``length``)."""
    bad = [r for r in finish_reasons if r not in ("stop", "length")]
    if bad:
        raise ValueError(f"unknown finish reason {bad[0]!r} (expected 'stop' or 'length')")
    return torch.tensor([r == "stop" for r in finish_reasons], dtype=torch.bool, device=device)


def apply_non_stop_penalty(rewards: torch.Tensor, stopped: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """``rewards`` with every response that did not stop given ``penalty`` instead (it
    replaces the verifier reward, it is not added to it: open-instruct's
    ``non_stop_penalty`` / ``penalty_reward_value``). ``penalty=None`` changes nothing."""
    if penalty is None:
        return rewards
    return torch.where(stopped.to(rewards.device), rewards, torch.full_like(rewards, float(penalty)))


def drop_truncated(mask: torch.Tensor, stopped: torch.Tensor) -> torch.Tensor:
    """The loss mask ``(B, T)`` with the rows of responses that did not stop cleared, so
    they add nothing to the loss and no tokens to its count."""
    return mask.bool() & stopped.to(mask.device).bool().unsqueeze(1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` long: the column of each row's last unmasked token (-1 for an empty row).
    Works for right padding and for holes in the mask alike."""
    cols = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), cols, torch.full_like(cols, -1)).max(dim=1).values


def token_rewards(rewards: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None,
                  beta: float = 0.0) -> torch.Tensor:
    """PPO's per-token rewards ``(B, T)``, as Tülu 3: ``-beta x kl[i, t]`` on every
    response token, plus the sequence reward ``rewards[i]`` on the row's last response
    token; 0 on padding.

    ``kl`` is the per-token KL estimate to the reference (``posttrain.losses.kl``) from
    the rollout, without gradient; pass ``kl=None`` (or ``beta=0``) to put the KL in the
    loss instead. A row with no unmasked token gets no reward.

    open-instruct puts the sequence reward one position past the last response token
    (``sequence_lengths_p1``), where no token was sampled; here it is on the last sampled
    token, where the episode ends (as verl), and bootstrapping stops there (see
    ``posttrain.rl.advantages.gae_advantages``)."""
    mask = mask.bool()
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    if kl is not None and beta:
        out = out - beta * kl.detach().float() * mask
    last = last_token_index(mask)
    rows = torch.nonzero(last >= 0).squeeze(1)
    out[rows, last[rows]] += rewards.to(out.device, out.dtype)[rows]
    return out


def reward_totals(token_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)``: each response's summed per-token reward (the verifier reward minus the
    KL penalty: open-instruct's ``rlhf_reward``), for metrics."""
    return masked_sum(token_rewards, mask, dim=1)


def verifier_accuracy(rewards: torch.Tensor | Sequence[float], datasets: Sequence, threshold: float = 0.0
                      ) -> dict[str, float]:
    """Share of responses whose reward is above ``threshold`` (Tülu 3 counts a reward
    above 0 as correct), overall (``all``) and per verifier name (a row naming several
    verifiers counts under their names joined with ``+``)."""
    values = [float(r) for r in (rewards.tolist() if torch.is_tensor(rewards) else rewards)]
    if len(values) != len(datasets):
        raise ValueError(f"{len(values)} rewards but {len(datasets)} dataset names")
    groups: dict[str, list[bool]] = {"all": []}
    for value, name in zip(values, datasets):
        key = name if isinstance(name, str) else "+".join(name)
        groups.setdefault(key.lower(), []).append(value > threshold)
        groups["all"].append(value > threshold)
    return {k: (sum(v) / len(v) if v else float("nan")) for k, v in groups.items()}
