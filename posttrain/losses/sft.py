"""Supervised fine-tuning loss: next-token cross-entropy on label tokens only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of predicting ``labels[:, t+1]`` from ``logits[:, t]``, summed over
    the positions whose label is not -100.

    Returns ``(loss_sum, n_tokens)``: the differentiable sum of per-token losses and the
    number of tokens it sums over (a 0-d long tensor). The training loop divides by the
    tokens of the whole optimizer step (``mean``) or not at all (``sum``), which a per-batch
    mean here could not express under gradient accumulation."""
    targets = labels[:, 1:]
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()  # no copy when already fp32
    loss_sum = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (targets != IGNORE_INDEX).sum()


def label_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positions, targets)``: the flat indices (into ``B * T``) of the positions ``t``
    whose next label ``labels[:, t+1]`` is trained, and those labels, so that the SFT loss
    runs the LM head on those rows alone (``posttrain.logprobs``). Meant for the collate
    function (CPU), so the training step needs no device sync to find them."""
    keep = labels[:, 1:] != IGNORE_INDEX
    rows, cols = keep.nonzero(as_tuple=True)
    return rows * labels.shape[1] + cols, labels[rows, cols + 1]
