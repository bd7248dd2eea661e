"""The fixed-data driver SFT and DPO share: a data set known up front, cut into
micro-batches by a plan, trained for epochs or ``max_steps`` on the step engine
(``engine.StepEngine``), which does the optimizer steps and checkpoints. For batches that
are produced during training (RL), see ``online.OnlineTrainer``.

Usage from a stage runner::

    trainer = Trainer(ctx, policy, train_examples, collate, loss_fn,
                      eval_examples=..., reduction="mean", batch_plan=...)
    trainer.train()          # resumes from ctx.checkpoint_dir when a checkpoint is there;
                             # leaves the final model in ctx.model_dir

- ``train_examples``: any sequence; ``collate(list_of_examples) -> dict`` makes one
  micro-batch. Tensors in the dict are moved to the device; an int ``n_tokens`` key, when
  present, counts the batch's real tokens for the rates and checkpoint names.
- ``loss_fn(model, batch) -> LossOutput``: the SUM of per-item losses of the micro-batch,
  the number of items (tokens for SFT, pairs for DPO) and optional metric sums.
- ``reduction``: ``mean`` divides the gradient by the items of the whole optimizer step
  (all micro-batches, all processes), so it equals one big batch's however the step is
  split; ``sum`` leaves the plain sum (Tülu 3's SFT: every token weighs the same).
- ``count_items(cpu_batch) -> int`` (optional, recommended): the items a collated batch
  will report, computed before its forward (e.g. label tokens). The loop then folds the
  reduction into the loss before ``backward`` instead of rescaling every gradient after.
- ``batch_plan(epoch) -> list[list[int]]``: the micro-batches of an epoch as example
  indices, a pure function of the epoch (see ``batching.py``); default: shuffled chunks of
  ``per_device_batch_size`` seeded by the stage's seed.

Hyperparameters come from ``ctx.config`` (``TrainStageConfig``); ``compile: true`` runs
``loss_fn`` through ``torch.compile`` (the batch it sees then holds only the tensors). An
optimizer step takes ``gradient_accumulation_steps`` micro-batches per process; steps do
not cross epochs (the last step of an epoch may take fewer). ``accelerate`` owns device
placement, DDP gradient sync (``no_sync`` on all but the last micro-batch) and
``backward``; the engine does the accumulation itself because the ``mean`` divisor is only
known once every micro-batch of the step has been seen. ``mixed_precision`` on the stage
config (``no`` when absent; ``bf16``, ``auto``) is the engine's. Metrics go to ``ctx.metrics``
every ``logging_steps``: ``loss`` (per item), ``lr``, ``grad_norm`` (before clipping, mean
over the window), ``tokens_per_s``, ``steps_per_s``, ``tokens`` (seen so far), ``epoch``,
plus each ``LossOutput.metrics`` key averaged per item, and ``eval_loss`` /
``eval_<metric>`` every ``eval_steps`` and at the end.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from posttrain.training import checkpoint as ckpt
from posttrain.training.batching import chunked_plan
from posttrain.training.engine import (LossFn, LossOutput, OptimizerSettings, StepEngine, get_accelerator,
                                       set_seed)
from posttrain.training.window import StepWindow

__all__ = ["LossOutput", "LossFn", "Trainer", "get_accelerator", "set_seed"]

log = logging.getLogger(__name__)

MAIN = "policy"


def start_or_resume(acc, checkpoint_dir: Path, resume: Callable[[Path], Any], seed: int) -> Path | None:
    """The start of a run, for both drivers: drop what a killed save left half-written
    (main process, then everyone waits), then ``resume(folder)`` from the latest
    checkpoint, or seed every RNG with ``seed`` for a fresh run. Returns that folder
    (None: fresh)."""
    if acc.is_main_process:
        ckpt.remove_partial(checkpoint_dir)
    acc.wait_for_everyone()
    folder = ckpt.latest_checkpoint(checkpoint_dir)
    if folder is not None:
        resume(folder)
    else:
        set_seed(seed)
    return folder


class Trainer:
    """Train ``policy.model`` on ``train_examples``; see the module docstring."""

    def __init__(
        self,
        ctx,
        policy,
        train_examples: Sequence[Any],
        collate: Callable[[list[Any]], dict],
        loss_fn: LossFn,
        eval_examples: Sequence[Any] | None = None,
        *,
        reduction: Literal["mean", "sum"] = "mean",
        batch_plan: Callable[[int], list[list[int]]] | None = None,
        eval_batch_plan: list[list[int]] | None = None,
        count_items: Callable[[dict], int] | None = None,
        progress: bool = True,
    ):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be mean or sum, got {reduction!r}")
        if not len(train_examples):
            raise ValueError("no training examples")
        self.ctx, self.cfg, self.policy = ctx, ctx.config, policy
        self.train_examples, self.eval_examples = train_examples, eval_examples or []
        self.collate, self.loss_fn, self.reduction = collate, loss_fn, reduction
        self.seed = self.cfg.seed if self.cfg.seed is not None else ctx.recipe.seed
        self.batch_plan = batch_plan or chunked_plan(len(train_examples), self.cfg.per_device_batch_size, self.seed)
        bs = self.cfg.per_device_batch_size
        self.eval_plan = eval_batch_plan or [
            list(range(i, min(i + bs, len(self.eval_examples)))) for i in range(0, len(self.eval_examples), bs)
        ]
        self.progress, self.count_items = progress, count_items
        # Compiling the loss function (not the module) keeps the model's state_dict keys,
        # saving, LoRA and generation untouched; dynamo traces through the model's forward.
        self._compiled_loss = torch.compile(loss_fn) if getattr(self.cfg, "compile", False) else None
        self.engine = StepEngine(mixed_precision=getattr(self.cfg, "mixed_precision", None) or "no")
        self.acc = self.engine.acc
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        self.per_step = self.cfg.gradient_accumulation_steps * self.world
        self._plans: dict[int, list[list[int]]] = {}
        self.total_steps = self._count_steps()
        trained = self.engine.add_model(MAIN, policy.model, OptimizerSettings.from_config(self.cfg),
                                        total_steps=self.total_steps, save=policy.save)
        self.model, self.params = trained.module, trained.params
        self.optimizer, self.scheduler = trained.optimizer, trained.scheduler
        self.step, self.tokens, self.epoch, self.micro = 0, 0, 0, 0

    # ------------------------------------------------------------------ plan
    def _plan(self, epoch: int) -> list[list[int]]:
        if epoch not in self._plans:
            self._plans = {epoch: self.batch_plan(epoch)}  # keep one epoch's plan only
        return self._plans[epoch]

    def _steps_in(self, epoch: int) -> int:
        return math.ceil(len(self.batch_plan(epoch)) / self.per_step)

    def _count_steps(self) -> int:
        if self.cfg.max_steps:
            return self.cfg.max_steps
        full, frac = int(self.cfg.num_epochs), self.cfg.num_epochs % 1
        total = sum(self._steps_in(e) for e in range(full))
        if frac:
            total += math.ceil(frac * self._steps_in(full))
        return max(total, 1)

    def _next_step_batches(self) -> list[list[int]]:
        """The micro-batches (example indices) of the next step, across all processes;
        advances the data position."""
        plan = self._plan(self.epoch)
        if self.micro >= len(plan):
            self.epoch, self.micro = self.epoch + 1, 0
            plan = self._plan(self.epoch)
        group = plan[self.micro : self.micro + self.per_step]
        self.micro += len(group)
        return group

    # ------------------------------------------------------------------ train
    def train(self) -> dict:
        """Run (or resume) to ``total_steps``, then write the final checkpoint and
        ``ctx.model_dir``. Returns the last logged metrics."""
        cfg, acc = self.cfg, self.acc
        resume = start_or_resume(acc, self.ctx.checkpoint_dir, self._resume, self.seed)
        n_params = sum(p.numel() for p in self.policy.model.parameters())
        log.info("%s: %s params (%s trainable), %d examples, %d steps of %d micro-batches x %d, %s reduction%s",
                 self.ctx.name, f"{n_params:,}", f"{sum(p.numel() for p in self.params):,}",
                 len(self.train_examples), self.total_steps, self.per_step, cfg.per_device_batch_size,
                 self.reduction, f", resuming at step {self.step} from {resume}" if resume else "")
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.ctx.name, unit="step",
                   disable=not (self.progress and acc.is_main_process), dynamic_ncols=True)
        last: dict = {}
        win = StepWindow()
        while self.step < self.total_steps:
            win.add_step(*self._train_step())
            self.step += 1
            bar.update(1)
            at_end = self.step == self.total_steps
            if self.step % cfg.logging_steps == 0 or at_end:
                last = self._log(win)
                bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_s']:.0f}", refresh=False)
                win = StepWindow()
            paused = time.perf_counter()
            if self.eval_examples and ((cfg.eval_steps and self.step % cfg.eval_steps == 0) or at_end):
                last.update(self.evaluate(log_step=True))
            if (cfg.save_steps and self.step % cfg.save_steps == 0) or at_end:
                self.save_checkpoint()
            win.pause(time.perf_counter() - paused)  # rates count training time only
        bar.close()
        if self.eval_examples and "eval_loss" not in last:  # resumed after the last step
            last.update(self.evaluate(log_step=True))
        self.save_model(self.ctx.model_dir)
        return last

    def _train_step(self) -> tuple[torch.Tensor, torch.Tensor, dict, int, torch.Tensor | None]:
        loss_sum, items, metrics, tokens = self.compute_gradients(self._next_step_batches())
        # Without clipping the norm costs a pass over the gradients: only on logging steps.
        grad_norm = self.engine.apply_gradients(MAIN, grad_norm=(self.step + 1) % self.cfg.logging_steps == 0)
        self.tokens += tokens
        return loss_sum, items, metrics, tokens, grad_norm

    def compute_gradients(self, group: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, dict, int]:
        """Forward and backward one optimizer step's micro-batches (``group``: example
        indices of every process's micro-batches; this process takes its share) and leave
        the reduced gradient in ``.grad``. Returns this process's ``(loss_sum, items,
        metric sums, tokens)``."""
        mine = group[self.rank :: self.world]
        join_only = not mine  # fewer micro-batches than processes: join DDP with a zero loss
        if join_only:
            mine = group[:1]
        cpu_batches = [self.collate([self.train_examples[j] for j in idx]) for idx in mine]
        r = self.engine.compute_gradients(MAIN, cpu_batches, self._loss_fn, reduction=self.reduction,
                                          count_items=self.count_items, join_only=join_only)
        return r.loss_sum, r.items, r.metrics, r.tokens

    def _loss_fn(self, model, batch: dict) -> LossOutput:
        if self._compiled_loss is None:
            return self.loss_fn(model, batch)
        # Python scalars (``n_tokens``) would be baked into the graph: a recompile per batch.
        return self._compiled_loss(model, {k: v for k, v in batch.items() if torch.is_tensor(v)})

    # ------------------------------------------------------------------ metrics
    def _log(self, win: StepWindow) -> dict:
        row = win.summary(self.acc)
        row = {"loss": row.pop("loss"), "lr": self.scheduler.get_last_lr()[0], **win.rates(self.acc),
               "tokens": self._global_tokens(),
               "epoch": self.epoch + self.micro / max(len(self._plan(self.epoch)), 1), **row,
               **self.engine.guard.metrics()}
        if self.acc.is_main_process:
            self.ctx.metrics.log(self.step, **row)
        return row

    def _global_tokens(self) -> int:
        if self.world == 1:
            return self.tokens
        return int(self.acc.reduce(torch.tensor(self.tokens, device=self.acc.device), "sum"))

    @torch.no_grad()
    def evaluate(self, log_step: bool = False) -> dict:
        """Held-out loss (per item) and metrics over ``eval_examples``."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.acc.device, dtype=torch.float64)
        items = torch.zeros((), device=self.acc.device, dtype=torch.long)
        sums: dict[str, torch.Tensor] = {}
        mine = self.eval_plan[self.rank :: self.world]
        # Every process runs as many forwards as the busiest one: a sharded forward (FSDP2,
        # ZeRO-3) gathers parameters with all processes, and DDP may sync buffers in it. A
        # process with fewer batches repeats its first one and discards the result.
        rounds = math.ceil(len(self.eval_plan) / self.world) if self.world > 1 else len(mine)
        for i in range(rounds):
            idx = mine[i] if i < len(mine) else self.eval_plan[0]
            with self.engine.autocast():
                out = self._loss_fn(self.model, self.engine.to_device(self.collate([self.eval_examples[j] for j in idx])))
            if i >= len(mine):
                continue
            loss_sum += out.loss_sum.double()
            items += out.n_items
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0) + v.double()
        if self.world > 1:
            loss_sum, items = self.acc.reduce(loss_sum, "sum"), self.acc.reduce(items, "sum")
            sums = {k: self.acc.reduce(v, "sum") for k, v in sums.items()}
        n = max(int(items), 1)
        row = {"eval_loss": float(loss_sum) / n, **{f"eval_{k}": float(v) / n for k, v in sums.items()}}
        if log_step and self.acc.is_main_process:
            self.ctx.metrics.log(self.step, **row)
        return row

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoint_dir/stepN-tokensM`` atomically and prune to ``keep_last``."""
        state = {"epoch": self.epoch, "micro_batch": self.micro, "seed": self.seed,
                 "total_steps": self.total_steps}
        return self.engine.save_checkpoint(self.ctx.checkpoint_dir, step=self.step, tokens=self._global_tokens(),
                                           state=state, keep_last=self.cfg.keep_last)

    def _resume(self, folder: Path) -> None:
        state = self.engine.load_checkpoint(folder).state
        self.step, self.tokens = state["step"], state["tokens"] // self.world
        self.epoch, self.micro = state["epoch"], state["micro_batch"]

    def save_model(self, out_dir: Path) -> None:
        """The final model as a ``save_pretrained`` folder, written atomically."""
        self.engine.save_main_model(out_dir)
