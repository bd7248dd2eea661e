"""Masked reductions over padded ``(B, T)`` tensors, and metric sums that combine exactly
across micro-batches and processes.

Every per-token RL tensor is padded: row ``i`` is one response, ``mask[i, t]`` is true
(or 1) on its real tokens and false on padding (and on tokens a caller leaves out of the
loss). Padding never contributes to a sum, a mean, a variance, a max or a count.

:class:`Metrics` keeps each statistic as the pieces that add up (a sum and its count, or a
running max/min) rather than as a finished mean, so the statistics of an optimizer step
are the same however the step is cut into micro-batches or spread over processes; this
module is below ``posttrain.losses`` (the losses import it, never the other way).
"""

from __future__ import annotations

import math

import torch


def _fmask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.to(like.dtype)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is true (over all entries, or along ``dim``); whatever
    masked entries hold (even NaN or inf) is ignored."""
    kept = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is true; 0 where nothing is unmasked (no NaN)."""
    m = _fmask(mask, x)
    count = m.sum() if dim is None else m.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the unmasked entries of ``x`` (all of them together), with Bessel's
    correction ``n / (n - 1)`` when ``unbiased`` (as TRL's and open-instruct's
    ``masked_var``). With fewer than two entries the variance is 0."""
    n = _fmask(mask, x).sum()
    var = masked_sum((x - masked_mean(x, mask)) ** 2, mask) / n.clamp(min=1)
    if unbiased:
        var = var * n / (n - 1).clamp(min=1)
    return var


class Metrics:
    """Statistics of a batch that merge exactly: ``mean`` keeps a sum and a count, ``max``
    and ``min`` keep running extremes. ``update`` merges another batch's, ``all_reduce``
    merges every process's, ``compute`` gives ``{name: float}`` (NaN for a mean with no
    entries and for an extreme over nothing). Values are detached; nothing syncs with the
    device until ``compute``."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.maxima: dict[str, torch.Tensor] = {}
        self.minima: dict[str, torch.Tensor] = {}

    def add(self, name: str, total: torch.Tensor | float, count: torch.Tensor | float) -> "Metrics":
        """Add a raw ``(sum, count)`` pair to the mean ``name``."""
        total = torch.as_tensor(total).detach().float()
        count = torch.as_tensor(count, device=total.device).detach().float()
        self.sums[name] = self.sums[name] + total if name in self.sums else total
        self.counts[name] = self.counts[name] + count if name in self.counts else count
        return self

    def mean(self, name: str, values: torch.Tensor, mask: torch.Tensor | None = None) -> "Metrics":
        """Add the (unmasked) entries of ``values`` to the mean ``name``."""
        values = values.detach().float()
        if mask is None:
            return self.add(name, values.sum(), values.numel())
        return self.add(name, masked_sum(values, mask), _fmask(mask, values).sum())

    def max(self, name: str, values: torch.Tensor, mask: torch.Tensor | None = None) -> "Metrics":
        """Fold the (unmasked) entries of ``values`` into the running max ``name``."""
        values = values.detach().float()
        if mask is not None:
            values = values.masked_fill(~mask.bool(), -math.inf)
        top = values.max() if values.numel() else torch.tensor(-math.inf, device=values.device)
        self.maxima[name] = torch.maximum(self.maxima[name], top) if name in self.maxima else top
        return self

    def min(self, name: str, values: torch.Tensor, mask: torch.Tensor | None = None) -> "Metrics":
        """Fold the (unmasked) entries of ``values`` into the running min ``name``."""
        values = values.detach().float()
        if mask is not None:
            values = values.masked_fill(~mask.bool(), math.inf)
        low = values.min() if values.numel() else torch.tensor(math.inf, device=values.device)
        self.minima[name] = torch.minimum(self.minima[name], low) if name in self.minima else low
        return self

    def update(self, other: "Metrics") -> "Metrics":
        """Merge ``other`` (another micro-batch's statistics) into this one."""
        for k, v in other.sums.items():
            self.add(k, v, other.counts[k])
        for k, v in other.maxima.items():
            self.maxima[k] = torch.maximum(self.maxima[k], v) if k in self.maxima else v
        for k, v in other.minima.items():
            self.minima[k] = torch.minimum(self.minima[k], v) if k in self.minima else v
        return self

    def all_reduce(self) -> "Metrics":
        """Merge every process's statistics in place (sums and counts added, extremes
        maxed/minned). A no-op outside ``torch.distributed``. Every process must hold the
        same names, which it does when all run the same code path."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        for table, op in ((self.sums, dist.ReduceOp.SUM), (self.counts, dist.ReduceOp.SUM),
                          (self.maxima, dist.ReduceOp.MAX), (self.minima, dist.ReduceOp.MIN)):
            if table:
                keys = sorted(table)
                packed = torch.stack([table[k].float() for k in keys])
                dist.all_reduce(packed, op=op)
                table.update(zip(keys, packed.unbind()))
        return self

    def item_sums(self, n_items: torch.Tensor | int) -> dict[str, torch.Tensor]:
        """The means as ``mean x n_items``, for a ``LossOutput.metrics`` dict (which the
        trainer sums over micro-batches and divides by their summed items). Exact when each
        mean counts the same things as the loss's items (token statistics under
        ``token_mean``); otherwise an items-weighted average of micro-batch means. Extremes
        cannot be carried this way and are left out: take them from ``compute``."""
        n = torch.as_tensor(n_items).float()
        out = {}
        for k, v in self.sums.items():
            c = self.counts[k]
            out[k] = torch.where(c > 0, v / c.clamp(min=1), torch.zeros_like(v)) * n.to(v.device)
        return out

    def compute(self) -> dict[str, float]:
        """``{name: value}``: means as sum / count, extremes as they are."""
        out = {}
        for k, v in self.sums.items():
            n = float(self.counts[k])
            out[k] = float(v) / n if n > 0 else math.nan
        for table in (self.maxima, self.minima):
            for k, v in table.items():
                out[k] = float(v) if math.isfinite(float(v)) else math.nan
        return out
