"""Non-finite steps: a NaN or Inf in an optimizer step's loss or gradients.

One such step applied turns every weight it touches into NaN, and every checkpoint after
it inherits them. The step engine asks :class:`NonFiniteGuard` after the backward pass of
each optimizer step (the gradients reduced over processes, not yet applied). By default a
bad step stops the stage with a one-line ``NonFiniteError`` before anything is applied,
so the weights and every checkpoint already written hold no NaN and the newest
checkpoint is the last good one. With ``skip_nonfinite_steps`` (``OptimizerSettings.
skip_nonfinite``) the step's gradients are dropped instead: the weights and optimizer
moments stay as they were, the schedule still advances (the learning rate stays a
function of the step number), the step's loss and metrics are left out of the logged
means, and the skips are counted (``nonfinite_skipped_steps`` in the metrics).

Every process reaches the same decision: each one's flag is summed over processes, since
under FSDP a process sees only its shard of the gradients. DeepSpeed keeps its gradients
inside its own partitioned optimizer; the guard does not see them there.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from posttrain.errors import PosttrainError

if TYPE_CHECKING:
    from posttrain.training.engine import StepResult, TrainedModel

log = logging.getLogger(__name__)


class NonFiniteError(PosttrainError):
    """An optimizer step with a NaN or Inf loss or gradient, stopped before it was applied."""


def nonfinite_flag(loss_sum: torch.Tensor, params) -> torch.Tensor:
    """0-d int tensor on the loss's device: 1 when the loss or any gradient holds a NaN or
    Inf. The largest absolute entry of each gradient is finite exactly when all its entries
    are (``amax`` propagates NaN; a 2-norm could overflow on large finite values). On CPU
    ``abs().amax()`` per tensor measured about 10x cheaper than ``_foreach_norm(inf)``
    (0.9 vs 9.3 ms per step for 3.4M parameters)."""
    bad = ~torch.isfinite(loss_sum.detach().float())
    grads = [g.to_local() if hasattr(g, "to_local") else g for p in params if (g := p.grad) is not None]
    peaks = [g.abs().amax().float() for g in grads if g.numel()]
    if peaks:
        bad = bad | ~torch.isfinite(torch.stack(peaks).max()).to(bad.device)
    return bad.to(torch.int32)


class NonFiniteGuard:
    """Checks each optimizer step before it is applied; see the module docstring."""

    def __init__(self, acc):
        self.acc = acc
        self.skipped: dict[str, int] = {}
        """Steps skipped so far in this process, per model."""
        self._pending: set[str] = set()

    def check(self, tm: "TrainedModel", result: "StepResult") -> None:
        """After the backward of ``tm``'s step: raise ``NonFiniteError``, or mark the step
        to be skipped and clear its loss, items and metrics (so the logged means leave it
        out), or do nothing when everything is finite. Every process must call it."""
        from posttrain.training import sharding

        if sharding.is_deepspeed(self.acc):
            return
        flag = nonfinite_flag(result.loss_sum, tm.params)
        if self.acc.num_processes > 1:
            flag = self.acc.reduce(flag.to(self.acc.device), "sum")
        if not int(flag):
            return
        what = f"model {tm.name!r}: optimizer step {tm.optimizer_steps + 1}: the loss or gradient is not finite " \
               f"(loss sum on this process {float(result.loss_sum):.4g})"
        if not tm.settings.skip_nonfinite:
            raise NonFiniteError(f"{what}; stopped before applying it, so the weights and the checkpoints hold no "
                                 "NaN (resume continues from the newest checkpoint); set skip_nonfinite_steps: "
                                 "true in the stage to skip such steps instead, or lower the learning rate")
        self.skipped[tm.name] = self.skipped.get(tm.name, 0) + 1
        self._pending.add(tm.name)
        result.loss_sum.zero_()
        if torch.is_tensor(result.items):
            result.items.zero_()
        else:
            result.items = 0
        result.metrics.clear()
        log.warning("%s; skipped (%d so far)", what, self.skipped[tm.name])

    def skip_pending(self, tm: "TrainedModel") -> bool:
        """In place of ``apply_gradients``: when ``check`` marked ``tm``'s step, drop its
        gradients, advance its schedule and step count, and return True."""
        if tm.name not in self._pending:
            return False
        self._pending.discard(tm.name)
        tm.optimizer.zero_grad(set_to_none=True)
        tm.scheduler.step()
        tm.optimizer_steps += 1
        return True

    def metrics(self) -> dict[str, int]:
        """``nonfinite_skipped_steps`` (all models together) once a step was skipped."""
        total = sum(self.skipped.values())
        return {"nonfinite_skipped_steps": total} if total else {}
