"""The process's ``accelerate.Accelerator``: its precision resolved for this machine
(``precision.compute_precision``), sharding prepared for CPU processes (``sharding``), and
the DeepSpeed accelerator named up front on machines without CUDA. Every driver and stage
gets it from here, so all of them share one process group and one precision decision."""

from __future__ import annotations

import os

import torch

from posttrain.training import sharding
from posttrain.training.precision import compute_precision


def resolve_mixed_precision(value: str) -> str:
    """``no``, ``bf16`` or ``auto`` -> what accelerate gets (``no`` or ``bf16``) on this
    machine (``precision.compute_precision``); fp16 is refused."""
    return compute_precision(value, "cuda" if torch.cuda.is_available() else "cpu")


def get_accelerator(mixed_precision: str | None = None):
    """The process's ``Accelerator``. Its state is a per-process singleton, so creating it
    again is cheap; ``mixed_precision`` None keeps the current one (``no`` at first)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if not torch.cuda.is_available():
        # With DeepSpeed installed, accelerate imports it on every save_pretrained; its
        # accelerator probe then prints a warning to stdout (where `posttrain run` prints
        # its summary) unless told the accelerator up front.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    current = AcceleratorState._shared_state.get("_mixed_precision")
    wanted = (current or "no") if mixed_precision is None else resolve_mixed_precision(mixed_precision)
    if current is not None and current != wanted:
        # accelerate refuses a second precision in one process; stages of one recipe may
        # differ. Resetting its state keeps the process group (PartialState).
        AcceleratorState._reset_state()
    # cpu=True on a machine without CUDA: otherwise accelerate ignores torchrun's WORLD_SIZE
    # there and every process trains alone (gloo is the CPU backend).
    acc = Accelerator(mixed_precision=wanted, cpu=not torch.cuda.is_available())
    sharding.enable_sharding_on_cpu(acc.state)
    sharding.check_supported(acc)
    sharding.load_models_whole(acc)
    return acc


def set_seed(seed: int) -> None:
    from accelerate.utils import set_seed as _set_seed

    _set_seed(seed)
