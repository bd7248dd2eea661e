"""The training loop every gradient stage shares (SFT, DPO).

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
``backward``; the loop does the accumulation itself because the ``mean`` divisor is only
known once every micro-batch of the step has been seen. Metrics go to ``ctx.metrics``
every ``logging_steps``: ``loss`` (per item), ``lr``, ``grad_norm`` (before clipping, mean
over the window), ``tokens_per_s``, ``steps_per_s``, ``tokens`` (seen so far), ``epoch``,
plus each ``LossOutput.metrics`` key averaged per item, and ``eval_loss`` /
``eval_<metric>`` every ``eval_steps`` and at the end.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from posttrain.training import checkpoint as ckpt
from posttrain.training.batching import chunked_plan

log = logging.getLogger(__name__)


@dataclass
class LossOutput:
    """What a loss function returns for one micro-batch."""

    loss_sum: torch.Tensor
    """Differentiable 0-d sum of the per-item losses."""
    n_items: torch.Tensor | int
    """How many items ``loss_sum`` sums over (loss tokens for SFT, pairs for DPO)."""
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    """Extra values summed over the items (detached); reported divided by the item count."""


LossFn = Callable[[Any, dict], LossOutput]


def get_accelerator():
    """The process's ``Accelerator`` (its state is a per-process singleton, so creating it
    again is cheap). fp32 on a CPU; on a GPU the policy's dtype decides, no autocast."""
    from accelerate import Accelerator

    # cpu=True on a machine without CUDA: otherwise accelerate ignores torchrun's WORLD_SIZE
    # there and every process trains alone (gloo is the CPU backend).
    return Accelerator(mixed_precision="no", cpu=not torch.cuda.is_available())


def set_seed(seed: int) -> None:
    from accelerate.utils import set_seed as _set_seed

    _set_seed(seed)


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
        self.acc = get_accelerator()
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        self.per_step = self.cfg.gradient_accumulation_steps * self.world
        self._plans: dict[int, list[list[int]]] = {}
        self.total_steps = self._count_steps()

        model = policy.model
        self.params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]  # biases and norm gains, as HF Trainer
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.cfg.learning_rate, **_fast_adamw())
        self.model, self.optimizer = self.acc.prepare(model, opt)
        from transformers import get_scheduler

        # Not passed to accelerate.prepare: its wrapper steps the schedule once per process.
        self.scheduler = get_scheduler(
            self.cfg.lr_scheduler, self.optimizer.optimizer,
            num_warmup_steps=math.ceil(self.cfg.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
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
        if acc.is_main_process:
            ckpt.remove_partial(self.ctx.checkpoint_dir)
        acc.wait_for_everyone()
        resume = ckpt.latest_checkpoint(self.ctx.checkpoint_dir)
        if resume is not None:
            self._resume(resume)
        else:
            set_seed(self.seed)
        n_params = sum(p.numel() for p in self.policy.model.parameters())
        log.info("%s: %s params (%s trainable), %d examples, %d steps of %d micro-batches x %d, %s reduction%s",
                 self.ctx.name, f"{n_params:,}", f"{sum(p.numel() for p in self.params):,}",
                 len(self.train_examples), self.total_steps, self.per_step, cfg.per_device_batch_size,
                 self.reduction, f", resuming at step {self.step} from {resume}" if resume else "")
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.ctx.name, unit="step",
                   disable=not (self.progress and acc.is_main_process), dynamic_ncols=True)
        last: dict = {}
        win = _Window()
        while self.step < self.total_steps:
            win.add_step(*self._train_step())
            self.step += 1
            bar.update(1)
            at_end = self.step == self.total_steps
            if self.step % cfg.logging_steps == 0 or at_end:
                last = self._log(win)
                bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_s']:.0f}", refresh=False)
                win = _Window()
            paused = time.perf_counter()
            if self.eval_examples and ((cfg.eval_steps and self.step % cfg.eval_steps == 0) or at_end):
                last.update(self.evaluate(log_step=True))
            if (cfg.save_steps and self.step % cfg.save_steps == 0) or at_end:
                self.save_checkpoint()
            win.start += time.perf_counter() - paused  # rates count training time only
        bar.close()
        if self.eval_examples and "eval_loss" not in last:  # resumed after the last step
            last.update(self.evaluate(log_step=True))
        self.save_model(self.ctx.model_dir)
        return last

    def _train_step(self) -> tuple[torch.Tensor, torch.Tensor, dict, int, torch.Tensor | None]:
        loss_sum, items, metrics, tokens = self.compute_gradients(self._next_step_batches())
        grad_norm = None
        if self.cfg.max_grad_norm:
            grad_norm = self.acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        elif (self.step + 1) % self.cfg.logging_steps == 0:
            grads = [p.grad for p in self.params if p.grad is not None]
            grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.tokens += tokens
        return loss_sum, items, metrics, tokens, grad_norm

    def compute_gradients(self, group: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, dict, int]:
        """Forward and backward one optimizer step's micro-batches (``group``: example
        indices of every process's micro-batches; this process takes its share) and leave
        the reduced gradient in ``.grad``. Returns this process's ``(loss_sum, items,
        metric sums, tokens)``."""
        mine = group[self.rank :: self.world]
        dummy = not mine  # fewer micro-batches than processes: join DDP with a zero loss
        if dummy:
            mine = group[:1]
        self.model.train()
        cpu_batches = [self.collate([self.train_examples[j] for j in idx]) for idx in mine]
        # DDP averages gradients over processes; the scale undoes that and applies the
        # reduction. With count_items it is known before the forward passes and goes into
        # the loss; otherwise the gradients are rescaled after the last backward.
        loss_scale = None
        if self.count_items is not None:
            n = torch.tensor(0 if dummy else sum(int(self.count_items(b)) for b in cpu_batches))
            if self.world > 1:
                n = self.acc.reduce(n.to(self.acc.device), "sum")
            loss_scale = self.world / max(int(n), 1) if self.reduction == "mean" else float(self.world)
        loss_sum = torch.zeros((), device=self.acc.device)
        items = torch.zeros((), device=self.acc.device, dtype=torch.long)
        metrics: dict[str, torch.Tensor] = {}
        tokens = 0
        for i, cpu_batch in enumerate(cpu_batches):
            batch = self._to_device(cpu_batch)
            sync = i == len(mine) - 1
            with contextlib.nullcontext() if sync else self.acc.no_sync(self.model):
                out = self._loss(batch)
                if dummy:
                    self.acc.backward(out.loss_sum * 0)
                    continue
                self.acc.backward(out.loss_sum if loss_scale in (None, 1.0) else out.loss_sum * loss_scale)
            loss_sum += out.loss_sum.detach()
            items += out.n_items
            tokens += int(batch.get("n_tokens", 0))
            for k, v in out.metrics.items():
                metrics[k] = metrics.get(k, 0) + v.detach()
        if loss_scale is None and (self.reduction == "mean" or self.world > 1):
            step_items = self.acc.reduce(items, "sum") if self.world > 1 else items
            scale = self.world / step_items.clamp(min=1) if self.reduction == "mean" else float(self.world)
            torch._foreach_mul_([p.grad for p in self.params if p.grad is not None], scale)
        return loss_sum, items, metrics, tokens

    def _loss(self, batch: dict) -> LossOutput:
        if self._compiled_loss is None:
            return self.loss_fn(self.model, batch)
        # Python scalars (``n_tokens``) would be baked into the graph: a recompile per batch.
        return self._compiled_loss(self.model, {k: v for k, v in batch.items() if torch.is_tensor(v)})

    def _to_device(self, batch: dict) -> dict:
        dev = self.acc.device
        return {k: v.to(dev, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ------------------------------------------------------------------ metrics
    def _log(self, win: "_Window") -> dict:
        loss_sum, items, tokens = win.loss_sum, win.items, torch.tensor(win.tokens, device=self.acc.device)
        if self.world > 1:
            loss_sum, items, tokens = (self.acc.reduce(t, "sum") for t in (loss_sum, items, tokens))
        n = max(int(items), 1)
        elapsed = max(time.perf_counter() - win.start, 1e-9)
        row = {"loss": float(loss_sum) / n, "lr": self.scheduler.get_last_lr()[0],
               "tokens_per_s": int(tokens) / elapsed, "steps_per_s": win.steps / elapsed,
               "tokens": self._global_tokens(), "epoch": self.epoch + self.micro / max(len(self._plan(self.epoch)), 1)}
        if win.grad_norms:
            row["grad_norm"] = float(torch.stack([g.float() for g in win.grad_norms]).mean())
        for k, v in win.metrics.items():
            v = self.acc.reduce(v, "sum") if self.world > 1 else v
            row[k] = float(v) / n
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
        for idx in self.eval_plan[self.rank :: self.world]:
            out = self._loss(self._to_device(self.collate([self.eval_examples[j] for j in idx])))
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
        acc = self.acc
        rng = ckpt.rng_state()  # before saving: what an uninterrupted run continues with
        tokens = self._global_tokens()
        final = self.ctx.checkpoint_dir / ckpt.checkpoint_name(self.step, tokens)
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process:
            ckpt.atomic_dir(final)
            self.policy.save(tmp)
        acc.wait_for_everyone()
        state = {"step": self.step, "tokens": tokens, "epoch": self.epoch, "micro_batch": self.micro,
                 "seed": self.seed, "total_steps": self.total_steps, "world_size": self.world}
        ckpt.write_trainer_state(tmp, state, self.optimizer, self.scheduler, self.rank, rng)
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.commit_dir(tmp, final)
            ckpt.prune(self.ctx.checkpoint_dir, self.cfg.keep_last)
        acc.wait_for_everyone()
        ckpt.set_rng_state(rng)  # saving must not shift the RNG streams
        return final

    def _resume(self, folder: Path) -> None:
        state, opt_sd, sched_sd, rng = ckpt.read_trainer_state(folder, self.rank)
        if state.get("world_size", 1) != self.world:
            log.warning("resuming a %s-process checkpoint on %d processes: data order will differ",
                        state.get("world_size"), self.world)
        ckpt.load_weights(self.policy.model, folder)
        self.optimizer.load_state_dict(opt_sd)
        self.scheduler.load_state_dict(sched_sd)
        self.step, self.tokens = state["step"], state["tokens"] // self.world
        self.epoch, self.micro = state["epoch"], state["micro_batch"]
        ckpt.set_rng_state(rng)

    def save_model(self, out_dir: Path) -> None:
        """The final model as a ``save_pretrained`` folder, written atomically."""
        if self.acc.is_main_process:
            tmp = ckpt.atomic_dir(Path(out_dir))
            self.policy.save(tmp)
            ckpt.commit_dir(tmp, Path(out_dir))
        self.acc.wait_for_everyone()


class _Window:
    """Sums over the steps since the last log line, kept as tensors (no device sync)."""

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


def _fast_adamw() -> dict:
    """``fused=True`` where this torch has a fused AdamW for the device (CPU since 2.4,
    CUDA), else ``foreach``: one kernel over all parameters instead of a Python loop."""
    try:
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], fused=True)
        return {"fused": True}
    except (RuntimeError, TypeError):
        return {"foreach": True}
