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
    """``(positions, targets)`` for ``sft_loss_at``: the flat indices (into ``B * T``) of
    the positions ``t`` whose next label ``labels[:, t+1]`` is trained, and those labels.
    Meant for the collate function (CPU), so the training step needs no device sync to
    find them."""
    keep = labels[:, 1:] != IGNORE_INDEX
    rows, cols = keep.nonzero(as_tuple=True)
    return rows * labels.shape[1] + cols, labels[rows, cols + 1]


def sft_loss_at(hidden: torch.Tensor, lm_head: torch.nn.Module, positions: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``sft_loss`` from the final hidden states ``(B, T, H)``: only the label positions go
    through the LM head and the cross-entropy, so prompt and padding positions cost no
    head FLOPs and no ``(B, T, vocab)`` logits tensor is built (the head is 100k wide for
    OLMo 2). Same sum as ``sft_loss`` on the full logits; returns the count as an int."""
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
    logits = lm_head(picked).float()
    return F.cross_entropy(logits, targets, reduction="sum"), targets.shape[0]
