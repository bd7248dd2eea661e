"""Sums over the optimizer steps since the last log line, kept as tensors so that logging
costs no device sync until the line is written; reduced across processes when it is."""

from __future__ import annotations

import time

import torch


class StepWindow:
    """Loss sums, item counts, metric sums, tokens and gradient norms of the steps since the
    last log line (of one trained model), and the wall time they took."""

    def __init__(self):
        self.loss_sum, self.items, self.tokens, self.steps = 0.0, 0, 0, 0
        self.metrics: dict[str, torch.Tensor] = {}
        self.grad_norms: list[torch.Tensor] = []
        self.start = time.perf_counter()

    def add_step(self, loss_sum, items, metrics, tokens, grad_norm) -> None:
        self.loss_sum = loss_sum + self.loss_sum
        self.items = items + self.items
        self.tokens += tokens
        self.steps += 1
        for k, v in metrics.items():
            self.metrics[k] = v + self.metrics.get(k, 0)
        if grad_norm is not None:
            self.grad_norms.append(grad_norm.detach())

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` (evaluation, checkpointing) out of the rates."""
        self.start += seconds

    def summary(self, acc, prefix: str = "") -> dict:
        """``loss`` and each metric per item, ``grad_norm`` (mean over the window's
        steps), summed over every process; keys start with ``prefix``."""
        loss_sum, items = _as_tensor(self.loss_sum, acc), _as_tensor(self.items, acc)
        if acc.num_processes > 1:
            loss_sum, items = acc.reduce(loss_sum, "sum"), acc.reduce(items, "sum")
        n = max(int(items), 1)
        row = {f"{prefix}loss": float(loss_sum) / n}
        if self.grad_norms:
            row[f"{prefix}grad_norm"] = float(torch.stack([g.float() for g in self.grad_norms]).mean())
        for k, v in self.metrics.items():
            v = acc.reduce(v, "sum") if acc.num_processes > 1 else v
            row[f"{prefix}{k}"] = float(v) / n
        return row

    def rates(self, acc) -> dict:
        """``tokens_per_s`` (all processes) and ``steps_per_s`` over the window's time."""
        tokens = torch.tensor(self.tokens, device=acc.device)
        if acc.num_processes > 1:
            tokens = acc.reduce(tokens, "sum")
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {"tokens_per_s": int(tokens) / elapsed, "steps_per_s": self.steps / elapsed}


def _as_tensor(v, acc) -> torch.Tensor:
    return v if torch.is_tensor(v) else torch.tensor(v, device=acc.device)
