"""The online driver (RL): each step's batch is produced after the previous update, from
the models as they are then, and trained on in several optimizer passes. The step engine
(``engine.StepEngine``) does the optimizer steps and checkpoints.

Usage from an RL stage::

    trainer = OnlineTrainer(
        ctx,
        models=[OnlineModel("policy", policy.model, OptimizerSettings(learning_rate=5e-7, lr_scheduler="constant"),
                            loss_fn=policy_loss, count_items=count_response_tokens, save=policy.save),
                OnlineModel("value", value_model, OptimizerSettings(learning_rate=1e-5), loss_fn=value_loss)],
        source=rollouts,            # rollouts.produce(step, models) -> OnlineBatch
        collate=collate_samples,    # list of samples -> one micro-batch dict
        steps=1000, passes=4, minibatches=2, micro_batch_size=8,
        frozen={"reference": reference_model},
        after_update=lambda ev: ev.last_in_batch and sync_weights(trainer.engine.full_state_dict("policy")),
        after_resume=lambda step: sync_weights(trainer.engine.full_state_dict("policy")),
    )
    trainer.train()   # resumes from ctx.checkpoint_dir; leaves the first model in ctx.model_dir

One step (``step`` counts rollout batches, from 0):

1. ``source.produce(step, models)`` returns this process's ``OnlineBatch``: its samples
   (any objects; ``collate`` turns a list of them into a micro-batch) and metrics (numbers
   such as the mean reward, averaged over processes when logged). ``models`` maps every
   name to its prepared module, in eval mode, under ``torch.no_grad`` and the engine's
   autocast: sample, score, compute old/reference log-probs and values here.
2. ``passes`` passes (PPO epochs, GRPO's ``num_iterations``) over the samples, each cut
   into ``minibatches`` minibatches (``batching.minibatch_plan``: reshuffled per step and
   pass from the seed) of micro-batches of ``micro_batch_size`` samples. Each minibatch is
   one update: one optimizer step of every ``OnlineModel``, in order, with its own loss,
   optimizer, learning rate, schedule (over ``steps x passes x minibatches`` optimizer
   steps) and clipping. ``loss_fn(model, batch) -> LossOutput`` gives the SUM over the
   micro-batch's items and their count; the engine divides by the items of the whole
   minibatch over every process (``reduction="mean"``), or keeps the sum (``"sum"``).
   ``count_items(cpu_batch)`` gives a micro-batch's items before its forward.
3. ``after_update(UpdateEvent)`` runs after every update (weight sync to a rollout engine;
   ``event.last_in_batch`` marks the last update before the next ``produce``).
4. Every ``logging_steps``: metrics (``<model>/loss``, ``<model>/lr``, ``<model>/grad_norm``,
   each loss metric as ``<model>/<key>`` per item, the batch metrics, ``tokens``,
   ``tokens_per_s``, ``updates``, seconds per step in ``time/produce_s`` and
   ``time/update_s``). Every ``eval_steps``: ``evaluate(step) -> dict`` (called on every
   process; the main one's values are logged). Every ``save_steps`` and at the end: a
   checkpoint.

Checkpoints hold every trained model, optimizer and schedule, each process's RNG states,
the step and update counters and ``source.state_dict()`` (any picklable value, per
process; restored with ``source.load_state_dict``). A resumed run continues exactly as an
uninterrupted one when ``produce`` is a function of the step, the models, the global RNG
and that state; ``after_resume(step)`` runs once after a checkpoint is loaded (sync the
rollout engine to the restored weights there). Frozen models are not saved. Settings come
from ``ctx.config``: ``logging_steps``, ``eval_steps``, ``save_steps``, ``keep_last``,
``mixed_precision`` (``no`` when absent) and the seed (``ctx.seed``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch

from posttrain.training.batching import minibatch_plan
from posttrain.training.engine import LossFn, OptimizerSettings, Reduction, StepEngine, StepResult
from posttrain.training.loop import start_or_resume
from posttrain.training.window import StepWindow

log = logging.getLogger(__name__)


@dataclass
class OnlineModel:
    """A model the online driver trains, with its optimizer settings and its loss."""

    name: str
    """Key in metrics (``<name>/loss``), in ``produce``'s models and in checkpoints."""
    model: Any
    """The model as loaded (unwrapped); the engine prepares it."""
    optimizer: OptimizerSettings
    """Its own learning rate, schedule, weight decay and clipping."""
    loss_fn: LossFn
    """``loss_fn(prepared_model, batch) -> LossOutput`` for one micro-batch."""
    count_items: Callable[[dict], int] | None = None
    """Items of a collated micro-batch, known before its forward (recommended)."""
    reduction: Reduction = "mean"
    """``mean``: divide by the minibatch's items over all processes; ``sum``: keep the sum."""
    save: Callable[[Path], Any] | None = None
    """Writes the model's folder (default ``save_pretrained``); e.g. ``policy.save``."""


@dataclass
class OnlineBatch:
    """What ``produce`` returns: this process's samples of one step."""

    samples: Sequence[Any]
    metrics: dict[str, float] = field(default_factory=dict)
    """Numbers to log for the step (the same keys on every process; averaged over them)."""


@dataclass
class UpdateEvent:
    """What ``after_update`` is told after each update."""

    step: int
    """The rollout step being trained (0-based)."""
    pass_index: int
    minibatch: int
    update: int
    """Updates so far in the run, this one included (one per minibatch)."""
    last_in_batch: bool
    """The step's last update: the next thing to happen is the next ``produce``."""
    results: dict[str, StepResult]
    """Each trained model's step: loss sum, items, metric sums, gradient norm."""


class RolloutSource(Protocol):
    """Makes each step's batch. ``state_dict()`` / ``load_state_dict(state)`` are optional:
    when present their state goes into checkpoints."""

    def produce(self, step: int, models: Mapping[str, Any]) -> OnlineBatch:
        ...


class OnlineTrainer:
    """Train one or more models on batches produced during training; see the module
    docstring."""

    def __init__(
        self,
        ctx,
        models: Sequence[OnlineModel],
        source: RolloutSource | Callable[[int, Mapping[str, Any]], OnlineBatch],
        collate: Callable[[list[Any]], dict],
        *,
        steps: int,
        micro_batch_size: int,
        passes: int = 1,
        minibatches: int = 1,
        shuffle: bool = True,
        frozen: Mapping[str, Any] | None = None,
        after_update: Callable[[UpdateEvent], Any] | None = None,
        after_resume: Callable[[int], Any] | None = None,
        evaluate: Callable[[int], dict] | None = None,
        progress: bool = True,
    ):
        if not models:
            raise ValueError("an online run needs at least one model to train")
        for name, value in (("steps", steps), ("micro_batch_size", micro_batch_size), ("passes", passes),
                            ("minibatches", minibatches)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.ctx, self.cfg = ctx, ctx.config
        self.specs = {m.name: m for m in models}
        if len(self.specs) != len(models):
            raise ValueError("trained models need distinct names")
        self.source, self.collate = source, collate
        self.total_steps, self.micro_batch_size = steps, micro_batch_size
        self.passes, self.minibatches, self.shuffle = passes, minibatches, shuffle
        self.after_update, self.after_resume, self.evaluate = after_update, after_resume, evaluate
        self.progress = progress
        self.seed = ctx.seed
        self.logging_steps = getattr(self.cfg, "logging_steps", 1)
        self.engine = StepEngine(mixed_precision=getattr(self.cfg, "mixed_precision", None) or "no")
        self.acc = self.engine.acc
        optimizer_steps = steps * passes * minibatches
        for m in models:
            self.engine.add_model(m.name, m.model, m.optimizer, total_steps=optimizer_steps, save=m.save)
        for name, model in (frozen or {}).items():
            self.engine.add_frozen(name, model)
        self.step, self.tokens, self.updates = 0, 0, 0

    @property
    def modules(self) -> dict[str, Any]:
        """Every model's prepared module by name, trained ones first."""
        return {**{n: tm.module for n, tm in self.engine.models.items()}, **self.engine.frozen}

    # ------------------------------------------------------------------ train
    def train(self) -> dict:
        """Run (or resume) to ``steps``, then write the final checkpoint and the first
        model's folder in ``ctx.model_dir``. Returns the last logged metrics."""
        acc = self.acc
        resume = start_or_resume(acc, self.ctx.checkpoint_dir, self._resume, self.seed)
        log.info("%s: online, %d steps of %d passes x %d minibatches (micro-batches of %d), training %s%s",
                 self.ctx.name, self.total_steps, self.passes, self.minibatches, self.micro_batch_size,
                 ", ".join(self.specs), f", resuming at step {self.step} from {resume}" if resume else "")
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.ctx.name, unit="step",
                   disable=not (self.progress and acc.is_main_process), dynamic_ncols=True)
        last: dict = {}
        win = _Window(self.specs)
        while self.step < self.total_steps:
            self._train_step(win)
            self.step += 1
            bar.update(1)
            at_end = self.step == self.total_steps
            paused = time.perf_counter()
            if self.step % self.logging_steps == 0 or at_end:
                last = self._log(win)
                win = _Window(self.specs)
            eval_steps = getattr(self.cfg, "eval_steps", None)
            if self.evaluate is not None and ((eval_steps and self.step % eval_steps == 0) or at_end):
                last.update(self._evaluate())
            save_steps = getattr(self.cfg, "save_steps", None)
            if (save_steps and self.step % save_steps == 0) or at_end:
                self.save_checkpoint()
            win.pause(time.perf_counter() - paused)
        bar.close()
        self.engine.save_main_model(self.ctx.model_dir)
        return last

    def _train_step(self, win: "_Window") -> None:
        t0 = time.perf_counter()
        batch = self._produce()
        samples = batch.samples
        if not len(samples):
            raise ValueError(f"step {self.step}: produce returned no samples on process {self.acc.process_index}")
        t1 = time.perf_counter()
        tokens = 0
        for p in range(self.passes):
            plan = minibatch_plan(len(samples), self.minibatches, self.micro_batch_size, self.seed, self.step, p,
                                  self.shuffle)
            for m, micro in enumerate(plan):
                # A process with fewer samples than minibatches joins the gradient sync only.
                join_only = not micro
                micro_batches = [self.collate([samples[i] for i in idx]) for idx in (micro or [[0]])]
                if p == 0 and not join_only:
                    tokens += sum(int(b.get("n_tokens", 0)) for b in micro_batches)
                results = {}
                for name, spec in self.specs.items():
                    if join_only:
                        results[name] = self.engine.compute_gradients(name, micro_batches, spec.loss_fn,
                                                                      reduction=spec.reduction, join_only=True)
                        results[name].grad_norm = self.engine.apply_gradients(name)
                    else:
                        results[name] = self.engine.step(name, micro_batches, spec.loss_fn,
                                                         reduction=spec.reduction, count_items=spec.count_items)
                    win.models[name].add_step(*_fields(results[name]))
                self.updates += 1
                if self.after_update is not None:
                    self.after_update(UpdateEvent(self.step, p, m, self.updates,
                                                  p == self.passes - 1 and m == len(plan) - 1, results))
        self.tokens += tokens
        win.add_batch(batch.metrics, tokens, produce_s=t1 - t0, update_s=time.perf_counter() - t1)

    @torch.no_grad()
    def _produce(self) -> OnlineBatch:
        modules = self.modules
        for module in modules.values():
            module.eval()
        produce = getattr(self.source, "produce", self.source)
        with self.engine.autocast():
            batch = produce(self.step, modules)
        return batch if isinstance(batch, OnlineBatch) else OnlineBatch(batch)

    # ------------------------------------------------------------------ metrics
    def _log(self, win: "_Window") -> dict:
        acc = self.acc
        row: dict = {"tokens": self._global_tokens(), "updates": self.updates, **win.rates(acc)}
        for name, w in win.models.items():
            row.update(w.summary(acc, prefix=f"{name}/"))
            row[f"{name}/lr"] = self.engine.models[name].scheduler.get_last_lr()[0]
        row.update(win.batch_means(acc))
        row.update(self.engine.guard.metrics())
        if acc.is_main_process:
            self.ctx.metrics.log(self.step, **row)
        return row

    def _evaluate(self) -> dict:
        row = dict(self.evaluate(self.step) or {})
        if self.acc.is_main_process and row:
            self.ctx.metrics.log(self.step, **row)
        return row

    def _global_tokens(self) -> int:
        if self.acc.num_processes == 1:
            return self.tokens
        return int(self.acc.reduce(torch.tensor(self.tokens, device=self.acc.device), "sum"))

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoint_dir/stepN-tokensM`` atomically and prune to ``keep_last``."""
        state = {"updates": self.updates, "seed": self.seed, "total_steps": self.total_steps,
                 "passes": self.passes, "minibatches": self.minibatches}
        get_state = getattr(self.source, "state_dict", None)
        return self.engine.save_checkpoint(self.ctx.checkpoint_dir, step=self.step, tokens=self._global_tokens(),
                                           state=state, keep_last=getattr(self.cfg, "keep_last", 2),
                                           driver_state=get_state() if get_state is not None else None)

    def _resume(self, folder: Path) -> None:
        restored = self.engine.load_checkpoint(folder)
        state = restored.state
        if (state.get("passes"), state.get("minibatches")) != (self.passes, self.minibatches):
            log.warning("resuming a run of %s passes x %s minibatches with %d x %d: the schedule differs",
                        state.get("passes"), state.get("minibatches"), self.passes, self.minibatches)
        self.step, self.updates = state["step"], state["updates"]
        self.tokens = state["tokens"] // self.acc.num_processes
        load_state = getattr(self.source, "load_state_dict", None)
        if load_state is not None and restored.driver_state is not None:
            load_state(restored.driver_state)
        if self.after_resume is not None:
            self.after_resume(self.step)


def _fields(r: StepResult) -> tuple:
    return r.loss_sum, r.items, r.metrics, r.tokens, r.grad_norm


class _Window:
    """The per-model step windows and the batch metrics and timings since the last log."""

    def __init__(self, names):
        self.models = {n: StepWindow() for n in names}
        self.sums: dict[str, float] = {}
        self.steps, self.tokens = 0, 0
        self.start = time.perf_counter()

    def add_batch(self, metrics: dict, tokens: int, **seconds: float) -> None:
        self.steps += 1
        self.tokens += tokens
        for k, v in {**metrics, **{f"time/{k}": v for k, v in seconds.items()}}.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def pause(self, seconds: float) -> None:
        self.start += seconds
        for w in self.models.values():
            w.pause(seconds)

    def rates(self, acc) -> dict:
        tokens = torch.tensor(self.tokens, device=acc.device)
        if acc.num_processes > 1:
            tokens = acc.reduce(tokens, "sum")
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {"tokens_per_s": int(tokens) / elapsed, "steps_per_s": self.steps / elapsed}

    def batch_means(self, acc) -> dict:
        """Batch metrics and timings per step, averaged over the window and processes."""
        keys = sorted(self.sums)
        if not keys:
            return {}
        values = torch.tensor([self.sums[k] / max(self.steps, 1) for k in keys], dtype=torch.float64,
                              device=acc.device)
        if acc.num_processes > 1:
            values = acc.reduce(values, "mean")
        return dict(zip(keys, values.tolist()))
