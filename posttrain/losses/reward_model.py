"""The Bradley–Terry reward-model loss (Bradley & Terry 1952; InstructGPT, Tülu 3's RM),
a pure function of the scores of the chosen and rejected responses of each pair:

    loss = -log sigmoid(r_chosen - r_rejected - margin) + center_coef * (r_chosen + r_rejected)^2

``margin`` (Llama 2's RM: a per-pair margin from the rating gap; here a number or a
tensor of one per pair) asks for a gap of at least that much. ``center_coef`` (TRL's
``center_rewards_coefficient``, Eisenstein et al. 2023 use 0.01) keeps scores near 0,
which helps when the model later initialises a PPO value model; Tülu 3 used neither
(both 0, the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PairScores:
    loss: torch.Tensor
    """``(B,)`` per-pair loss (differentiable)."""
    accuracy: torch.Tensor
    """``(B,)`` 1.0 where the chosen response scores strictly higher, else 0.0."""
    margin: torch.Tensor
    """``(B,)`` ``r_chosen - r_rejected``, detached."""


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0,
                       center_coef: float = 0.0) -> PairScores:
    """Per-pair Bradley–Terry loss and accuracy of ``(B,)`` scores (module docstring)."""
    c, r = chosen.float(), rejected.float()
    gap = c - r
    loss = -F.logsigmoid(gap - torch.as_tensor(margin, dtype=gap.dtype, device=gap.device))
    if center_coef:
        loss = loss + center_coef * (c + r) ** 2
    return PairScores(loss, (gap.detach() > 0).float(), gap.detach())


def pair_score_metrics(out: PairScores, chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over the pairs (the trainer divides by the pair count): ``accuracy``,
    ``margin``, ``chosen``/``rejected`` mean scores."""
    return {"accuracy": out.accuracy.sum(), "margin": out.margin.sum(),
            "chosen": chosen.detach().float().sum(), "rejected": rejected.detach().float().sum()}
