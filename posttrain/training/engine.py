"""The step engine every training driver shares: models prepared with ``accelerate``, each
trained model's optimizer, schedule and clipping, gradient accumulation over micro-batches,
optimizer steps, and atomic checkpoints with exact resume. A driver decides what to train
on and when (``loop.Trainer``: a fixed data set, for SFT and DPO; ``online.OnlineTrainer``:
batches produced after each update, for RL); the engine does every optimizer step the same
way for all of them.

Usage::

    engine = StepEngine(seed=0, mixed_precision="no")
    engine.add_model("policy", policy.model, OptimizerSettings(learning_rate=1e-6), total_steps=100,
                     save=policy.save)   # the first model is the checkpoint's root folder
    engine.add_model("value", value_model, OptimizerSettings(learning_rate=1e-5), total_steps=100)
    engine.add_frozen("reference", reference_model)  # inference only: never trained or saved
    result = engine.step("policy", micro_batches, loss_fn, count_items=count_tokens)
    engine.save_checkpoint(ckpt_dir, step=1, tokens=512, state={...}, driver_state={...}, keep_last=2)
    restored = engine.load_checkpoint(checkpoint.latest_checkpoint(ckpt_dir))

One optimizer step (``step`` = ``compute_gradients`` then ``apply_gradients``):

- ``micro_batches``: this process's micro-batches of the step (dicts; tensors are moved to
  the device). ``loss_fn(model, batch) -> LossOutput`` returns the SUM of the micro-batch's
  per-item losses and the item count. The gradient is divided by the items of the whole
  step, over every micro-batch and process (``reduction="mean"``: DAPO's ``token_mean``
  over a step when items are tokens), or left a plain sum (``"sum"``).
- ``count_items(cpu_batch) -> int`` (optional, recommended): the items a micro-batch will
  report, known before its forward. The divisor then goes into the loss before
  ``backward``; without it every gradient is rescaled after the last ``backward``.
- DDP gradient sync happens on the last micro-batch only (``no_sync`` before it). A process
  with nothing to contribute joins with a zero loss (``join_only``).
- Then: clip the global gradient norm over the prepared (wrapped or sharded) parameters,
  step the optimizer, then the schedule (once per optimizer step), zero the gradients.

Precision. ``mixed_precision="bf16"`` computes the forward and backward in bf16 under
accelerate's autocast while parameters and optimizer state stay in fp32 (master
weights); ``"auto"`` is bf16 on a GPU that supports it and fp32 elsewhere. fp16 is
refused, as is training parameters stored in fp16: without loss scaling their gradients
underflow. Parameters stored in bf16 train with a warning: an Adam step of about 1e-6 on
a weight near 0.02, where bf16 values are 1e-4 apart, rounds back to the same weight, so
RL and DPO at their published learning rates would not move them; load the model in fp32
and use ``mixed_precision="bf16"`` instead.

Preparation. Each trained model is wrapped by ``accelerator.prepare`` first and its
optimizer built on the wrapped model's parameters (FSDP1 and DDP); FSDP2 and DeepSpeed
need the model and optimizer passed to ``prepare`` together, which remaps the optimizer to
the sharded parameters. The schedule is not prepared: accelerate's wrapper would step it
once per process.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from posttrain.errors import PosttrainError
from posttrain.logprobs import LogprobsModule
from posttrain.training import checkpoint as ckpt
from posttrain.training import sharding
from posttrain.training.accelerator import get_accelerator, resolve_mixed_precision, set_seed  # noqa: F401 (re-exported)
from posttrain.training.guards import NonFiniteGuard

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
Reduction = Literal["mean", "sum"]


@dataclass
class OptimizerSettings:
    """AdamW, its learning-rate schedule and gradient clipping, for one trained model."""

    learning_rate: float
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay on matrices (biases and norm gains get none, as HF Trainer)."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; None disables clipping."""
    lr_scheduler: str = "linear"
    """Any ``transformers.get_scheduler`` name: ``linear``, ``constant``, ``cosine``, ..."""
    warmup_ratio: float = 0.0
    """Fraction of the model's optimizer steps with a linear warmup from 0."""
    warmup_steps: int | None = None
    """Warmup length in optimizer steps; overrides ``warmup_ratio``."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's moment decay rates."""
    eps: float = 1e-8
    """Adam's denominator epsilon."""
    skip_nonfinite: bool = False
    """A step with a NaN/Inf loss or gradient is skipped (counted) instead of stopping the
    stage (``posttrain.training.guards``)."""

    @classmethod
    def from_config(cls, cfg, **overrides) -> "OptimizerSettings":
        """From a ``TrainStageConfig`` (learning rate, weight decay, clipping, schedule)."""
        values = dict(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                      max_grad_norm=cfg.max_grad_norm, lr_scheduler=cfg.lr_scheduler,
                      warmup_ratio=cfg.warmup_ratio, skip_nonfinite=getattr(cfg, "skip_nonfinite_steps", False))
        return cls(**{**values, **overrides})


@dataclass
class TrainedModel:
    """A model the engine trains, with what its optimizer steps need."""

    name: str
    module: Any
    """The prepared (possibly wrapped or sharded) model: call this one in losses."""
    model: Any
    """The model as given (unwrapped): what weights are saved from and loaded into."""
    params: list
    """Its trainable parameters, as the optimizer holds them."""
    optimizer: Any
    scheduler: Any
    settings: OptimizerSettings
    save: Callable[[Path], Any]
    """Writes the model's weights into a folder (``save_pretrained`` by default)."""
    optimizer_steps: int = 0


@dataclass
class StepResult:
    """This process's sums over one optimizer step (tensors stay on the device)."""

    loss_sum: torch.Tensor
    items: torch.Tensor
    metrics: dict[str, torch.Tensor]
    tokens: int
    """Real tokens of the micro-batches (their ``n_tokens``), for rates."""
    grad_norm: torch.Tensor | None = None
    """Global gradient norm before clipping, when clipped or asked for."""


@dataclass
class Restored:
    """What ``load_checkpoint`` hands back to the driver."""

    state: dict
    """``state.json``: step, tokens, the driver's own fields."""
    driver_state: Any
    """This process's driver state as saved (None when the driver saved none)."""


class StepEngine:
    """Optimizer steps for one or more models; see the module docstring."""

    def __init__(self, *, mixed_precision: str = "no"):
        self.acc = get_accelerator(mixed_precision)
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        self.sharded = sharding.is_sharded(self.acc)
        """Parameters split over processes (FSDP2, DeepSpeed): saving gathers them."""
        self.models: dict[str, TrainedModel] = {}
        self.frozen: dict[str, Any] = {}
        self.guard = NonFiniteGuard(self.acc)

    @property
    def device(self) -> torch.device:
        return self.acc.device

    @property
    def is_main_process(self) -> bool:
        return self.acc.is_main_process

    # ------------------------------------------------------------------ models
    def add_model(self, name: str, model, settings: OptimizerSettings, *, total_steps: int,
                  save: Callable[[Path], Any] | None = None) -> TrainedModel:
        """Prepare ``model`` for training with its own AdamW and schedule over
        ``total_steps`` optimizer steps. ``save(folder)`` writes its weights (default:
        ``model.save_pretrained``). The first model added is the run's main model."""
        if name in self.models or name in self.frozen:
            raise ValueError(f"a model named {name!r} is already in the engine")
        _check_trainable_dtype(name, model)
        from transformers import get_scheduler

        def build_optimizer(module):
            params = [p for p in module.parameters() if p.requires_grad]
            if not params:
                raise ValueError(f"model {name!r} has no trainable parameters")
            decay = [p for p in params if p.ndim >= 2]
            no_decay = [p for p in params if p.ndim < 2]  # biases and norm gains, as HF Trainer
            groups = [{"params": decay, "weight_decay": settings.weight_decay},
                      {"params": no_decay, "weight_decay": 0.0}]
            return params, torch.optim.AdamW([g for g in groups if g["params"]], lr=settings.learning_rate,
                                             betas=settings.betas, eps=settings.eps, **_fast_adamw())

        if self.sharded and hasattr(model, "peft_config"):
            raise PosttrainError(f"model {name!r}: LoRA with FSDP or DeepSpeed is not supported; train LoRA "
                                 "with DDP (recipes/accelerate/ddp.yaml), which its small optimizer state suits")
        # On several processes the wrapper (DDP, FSDP2's root, DeepSpeed) must see every
        # forward: it holds the fast log-prob path too (posttrain.logprobs.LogprobsModule).
        wrapped = LogprobsModule(model) if self.world > 1 else model
        if sharding.is_deepspeed(self.acc):
            if self.models:
                raise PosttrainError(f"model {name!r}: DeepSpeed trains one model per stage here; use FSDP2 "
                                     "(recipes/accelerate/fsdp2.yaml) to train several")
            sharding.configure_deepspeed(self.acc, settings.max_grad_norm)
        if self.sharded:
            # These remap an optimizer built on the unwrapped parameters while sharding.
            _, opt = build_optimizer(wrapped)
            module, optimizer = self.acc.prepare(wrapped, opt)
            params = [p for p in module.parameters() if p.requires_grad]
        else:
            module = self.acc.prepare(wrapped)
            params, opt = build_optimizer(module)
            optimizer = self.acc.prepare(opt)
        warmup = settings.warmup_steps if settings.warmup_steps is not None else math.ceil(
            settings.warmup_ratio * total_steps)
        scheduler = get_scheduler(settings.lr_scheduler, _torch_optimizer(optimizer), num_warmup_steps=warmup,
                                  num_training_steps=total_steps)
        entry = TrainedModel(name, module, model, params, optimizer, scheduler, settings,
                             save or _default_save(model))
        self.models[name] = entry
        return entry

    def add_frozen(self, name: str, model):
        """Place a model that is only evaluated (a reference): no gradients, no optimizer,
        not in checkpoints. Returns the prepared module."""
        if name in self.models or name in self.frozen:
            raise ValueError(f"a model named {name!r} is already in the engine")
        model.requires_grad_(False).eval()
        module = self.acc.prepare_model(model, evaluation_mode=True)
        self.frozen[name] = module
        return module

    def module(self, name: str):
        """The prepared module of a trained or frozen model."""
        return self.models[name].module if name in self.models else self.frozen[name]

    @property
    def main(self) -> TrainedModel:
        return next(iter(self.models.values()))

    def autocast(self):
        """The engine's mixed-precision context (nothing in fp32)."""
        return self.acc.autocast()

    def full_state_dict(self, name: str, *, everywhere: bool = False) -> dict:
        """The trained model's full, unsharded weights under the bare model's names (every
        process must call it): what a rollout engine's ``update_weights`` takes. Sharded,
        only the main process gets them unless ``everywhere``. A LoRA model's come
        unmerged (``posttrain.rollout.policy_weights`` merges them)."""
        return sharding.full_state_dict(self.acc, self.models[name].module, everywhere=everywhere)

    # ------------------------------------------------------------------ steps
    def step(self, name: str, micro_batches: Sequence[dict], loss_fn: LossFn, *, reduction: Reduction = "mean",
             count_items: Callable[[dict], int] | None = None, grad_norm: bool = True) -> StepResult:
        """One optimizer step of model ``name`` on this process's ``micro_batches``."""
        result = self.compute_gradients(name, micro_batches, loss_fn, reduction=reduction, count_items=count_items)
        result.grad_norm = self.apply_gradients(name, grad_norm=grad_norm)
        return result

    def compute_gradients(self, name: str, micro_batches: Sequence[dict], loss_fn: LossFn, *,
                          reduction: Reduction = "mean", count_items: Callable[[dict], int] | None = None,
                          join_only: bool = False) -> StepResult:
        """Forward and backward this process's micro-batches and leave the step's reduced
        gradient in ``.grad``. ``join_only``: contribute nothing (zero loss on the first
        micro-batch), only take part in the gradient sync."""
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be mean or sum, got {reduction!r}")
        if not micro_batches:
            raise ValueError(f"{name}: an optimizer step needs at least one micro-batch on every process")
        tm = self.models[name]
        acc = self.acc
        if join_only:
            micro_batches = micro_batches[:1]
        tm.module.train()
        deepspeed = sharding.is_deepspeed(acc)
        if deepspeed and count_items is None and (reduction == "mean" or self.world > 1):
            # Its partitioned gradients cannot be rescaled after the backward.
            raise PosttrainError(f"{name}: under DeepSpeed a loss needs count_items (items known before the forward)")
        # DDP averages gradients over processes; the scale undoes that and applies the
        # reduction. With count_items it is known before the forward passes and goes into
        # the loss; otherwise the gradients are rescaled after the last backward.
        loss_scale = None
        if count_items is not None:
            n = torch.tensor(0 if join_only else sum(int(count_items(b)) for b in micro_batches))
            if self.world > 1:
                n = acc.reduce(n.to(acc.device), "sum")
            loss_scale = self.world / max(int(n), 1) if reduction == "mean" else float(self.world)
        loss_sum = torch.zeros((), device=acc.device)
        items = torch.zeros((), device=acc.device, dtype=torch.long)
        metrics: dict[str, torch.Tensor] = {}
        tokens = 0
        for i, cpu_batch in enumerate(micro_batches):
            batch = self.to_device(cpu_batch)
            sync = i == len(micro_batches) - 1
            if deepspeed:  # DeepSpeed reduces, clips and steps at the boundary accelerate tells it
                acc.gradient_state._set_sync_gradients(sync)
            with contextlib.nullcontext() if sync else acc.no_sync(tm.module):
                with acc.autocast():
                    out = loss_fn(tm.module, batch)
                if join_only:
                    acc.backward(out.loss_sum * 0)
                    continue
                acc.backward(out.loss_sum if loss_scale in (None, 1.0) else out.loss_sum * loss_scale)
            loss_sum += out.loss_sum.detach()
            items += out.n_items
            tokens += int(batch.get("n_tokens", 0))
            for k, v in out.metrics.items():
                metrics[k] = metrics.get(k, 0) + v.detach()
        if loss_scale is None and (reduction == "mean" or self.world > 1):
            step_items = acc.reduce(items, "sum") if self.world > 1 else items
            scale = self.world / step_items.clamp(min=1) if reduction == "mean" else float(self.world)
            if self.sharded:
                scale = float(scale)  # DTensor gradients take a Python scalar, not a plain tensor
            torch._foreach_mul_([p.grad for p in tm.params if p.grad is not None], scale)
        result = StepResult(loss_sum, items, metrics, tokens)
        self.guard.check(tm, result)  # a NaN/Inf step stops the stage here, or is marked to be skipped
        return result

    def apply_gradients(self, name: str, *, grad_norm: bool = True) -> torch.Tensor | None:
        """Clip (over the prepared parameters), step the optimizer and the schedule, zero
        the gradients. Returns the norm before clipping when clipped or ``grad_norm``."""
        tm = self.models[name]
        norm = None
        if self.guard.skip_pending(tm):
            return None
        if sharding.is_deepspeed(self.acc):
            # It clipped and stepped in the last backward (``compute_gradients``); the rest
            # are accelerate's no-ops for it, the schedule is ours.
            tm.optimizer.step()
            tm.scheduler.step()
            tm.optimizer_steps += 1
            value = tm.module.get_global_grad_norm()
            return None if value is None else torch.as_tensor(float(value))
        if tm.settings.max_grad_norm:
            # All of the prepared module's parameters: accelerate matches that list to the
            # wrapped model to clip FSDP shards with a global norm.
            norm = self.acc.clip_grad_norm_(list(tm.module.parameters()), tm.settings.max_grad_norm)
        elif grad_norm:
            grads = [p.grad for p in tm.params if p.grad is not None]
            norm = None
            if grads and self.sharded:  # over every shard, not this process's alone
                norm = torch.nn.utils.get_total_norm(grads)
                norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            elif grads:
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        tm.optimizer.step()
        tm.scheduler.step()
        tm.optimizer.zero_grad(set_to_none=True)
        tm.optimizer_steps += 1
        return norm

    def to_device(self, batch: dict) -> dict:
        dev = self.acc.device
        return {k: v.to(dev, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, directory: Path, *, step: int, tokens: int, state: dict, keep_last: int,
                        driver_state: Any = None) -> Path:
        """Write ``directory/stepN-tokensM`` atomically (every process must call it): the
        main model's folder at its root, the other trained models in ``models/<name>/``,
        and ``trainer_state/`` (optimizers, schedules, RNG and ``driver_state`` of each
        process, ``state.json`` with ``state`` plus step and tokens). Prunes to
        ``keep_last``. RNG streams continue as if nothing was saved. Sharded training
        gathers each model's full weights for its folder (all processes take part; the
        main one writes) and writes each process's optimizer shard."""
        acc = self.acc
        rng = ckpt.rng_state()  # before saving: what an uninterrupted run continues with
        final = Path(directory) / ckpt.checkpoint_name(step, tokens)
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process:
            ckpt.atomic_dir(final)
        acc.wait_for_everyone()
        for i, tm in enumerate(self.models.values()):
            self._write_model(tm, tmp if i == 0 else tmp / ckpt.MODELS_DIR / tm.name)
        acc.wait_for_everyone()
        full_state = {**state, "step": step, "tokens": tokens, "world_size": self.world, "sharded": self.sharded,
                      "models": list(self.models),
                      "optimizer_steps": {n: tm.optimizer_steps for n, tm in self.models.items()}}
        optim = {n: (tm.optimizer, tm.scheduler) for n, tm in self.models.items()}
        if self.sharded:
            for i, tm in enumerate(self.models.values()):
                sharding.save_optimizer_shards(tmp / ckpt.STATE_DIR, tm.name, i == 0, tm.module, tm.optimizer)
        ckpt.write_trainer_state(tmp, full_state, optim, self.rank, rng, driver_state, optimizers=not self.sharded)
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.commit_dir(tmp, final)
            ckpt.prune(Path(directory), keep_last)
        acc.wait_for_everyone()
        ckpt.set_rng_state(rng)  # saving must not shift the RNG streams
        return final

    def _write_model(self, tm: TrainedModel, folder: Path) -> None:
        """``tm.save(folder)`` on the main process; sharded, with the gathered full weights
        (``save(folder, state_dict=...)``), every process taking part in the gather."""
        if not self.sharded:
            if self.acc.is_main_process:
                tm.save(folder)
            return
        full = sharding.full_state_dict(self.acc, tm.module)
        if self.acc.is_main_process:
            tm.save(folder, state_dict=full)

    def load_checkpoint(self, folder: Path) -> Restored:
        """Load every trained model's weights, optimizer and schedule, and this process's
        RNG states, from a checkpoint ``save_checkpoint`` wrote (every process calls it)."""
        saved = ckpt.read_trainer_state(folder, self.rank, list(self.models), optimizers=not self.sharded)
        if bool(saved.state.get("sharded", False)) != self.sharded:
            raise PosttrainError(f"{folder}: written by a {'sharded' if saved.state.get('sharded') else 'unsharded'} "
                                 f"run; resume it with the same kind of launch (FSDP/DeepSpeed or not)")
        if saved.state.get("world_size", 1) != self.world:
            if self.sharded:
                raise PosttrainError(f"{folder}: a sharded checkpoint of {saved.state.get('world_size')} processes "
                                     f"resumes on the same number of processes, not {self.world}")
            log.warning("resuming a %s-process checkpoint on %d processes: data order will differ",
                        saved.state.get("world_size"), self.world)
        for i, tm in enumerate(self.models.values()):
            weights = folder if i == 0 else folder / ckpt.MODELS_DIR / tm.name
            if self.sharded:
                sharding.load_full_state_dict(self.acc, tm.module, weights)
                sharding.load_optimizer_shards(Path(folder) / ckpt.STATE_DIR, tm.name, i == 0, tm.module,
                                               tm.optimizer)
            else:
                ckpt.load_weights(tm.model, weights)
                tm.optimizer.load_state_dict(saved.optimizers[tm.name])
            tm.scheduler.load_state_dict(saved.schedulers[tm.name])
            tm.optimizer_steps = saved.state.get("optimizer_steps", {}).get(tm.name, 0)
        ckpt.set_rng_state(saved.rng)
        return Restored(saved.state, saved.driver_state)

    def save_main_model(self, out_dir: Path) -> None:
        """The main model's folder, written atomically (the stage's output; every process
        calls it)."""
        tmp = Path(str(out_dir) + ".tmp")
        if self.acc.is_main_process:
            tmp = ckpt.atomic_dir(Path(out_dir))
        self.acc.wait_for_everyone()
        self._write_model(self.main, tmp)
        if self.acc.is_main_process:
            ckpt.commit_dir(tmp, Path(out_dir))
        self.acc.wait_for_everyone()


def _default_save(model) -> Callable[..., Any]:
    def save(folder: Path, state_dict: dict | None = None) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(folder, state_dict=state_dict)
        elif state_dict is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / "model.safetensors"))
        else:
            from safetensors.torch import save_model

            save_model(model, str(folder / "model.safetensors"))

    return save


def _check_trainable_dtype(name: str, model) -> None:
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    if torch.float16 in dtypes:
        raise PosttrainError(f"model {name!r}: training fp16 parameters without loss scaling is not supported; "
                             "load the model in float32 (mixed_precision: bf16 for bf16 compute)")
    if torch.bfloat16 in dtypes:
        log.warning("model %r trains bf16 parameters without fp32 master weights: updates smaller than bf16's "
                    "resolution (about 1e-6 on weights near 0.02) are lost; load it in float32 and use "
                    "mixed_precision bf16", name)


def _torch_optimizer(optimizer):
    """The torch optimizer inside accelerate's wrapper (and DeepSpeed's ZeRO optimizer,
    whose parameter groups are its inner optimizer's): what the schedule sets rates on."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def _fast_adamw() -> dict:
    """``fused=True`` where this torch has a fused AdamW for the device (CPU since 2.4,
    CUDA), else ``foreach``: one kernel over all parameters instead of a Python loop."""
    try:
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], fused=True)
        return {"fused": True}
    except (RuntimeError, TypeError):
        return {"foreach": True}
