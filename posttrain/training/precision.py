"""Which dtype weights are stored in and which precision the step computes in: pure
functions of the recipe's choices and the device, so the decision a GPU run makes can be
tested on a CPU.

Why it matters. An Adam step moves a weight by about the learning rate: 5e-7 for Tülu 3's
DPO, 5e-7 for OLMo 2's GRPO. Near 0.02 (a typical weight), neighbouring bf16 values are
about 1.2e-4 apart, so a bf16 weight updated in place rounds back to itself and such a run
trains nothing, silently. Trained weights therefore stay in fp32 (the master copy the
optimizer updates) and the forward and backward compute in bf16 under autocast (or
FSDP2's ``MixedPrecisionPolicy``): ``dtype: auto`` with ``mixed_precision: auto`` does this
on a GPU with bf16, and plain fp32 on a CPU (bf16 matmuls are 70-250x slower there).
Frozen models (a DPO/RL reference, a rollout engine) are never updated, so ``auto`` keeps
them in bf16 on a GPU. A LoRA policy trains only its adapters, which peft keeps in fp32
(``autocast_adapter_dtype``); its frozen base stays bf16 on a GPU. fp16 is refused for
training, as weights and as compute: without loss scaling its gradients underflow.
"""

from __future__ import annotations

from typing import Literal

import torch

from posttrain.errors import PosttrainError

MixedPrecision = Literal["auto", "no", "bf16"]

_NAMED = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def bf16_capable(device_type: str) -> bool:
    """Whether this machine's device of that type computes bf16 at full speed (a CUDA GPU
    with bf16 support); CPUs emulate it slowly."""
    return device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def weights_dtype(dtype: str, device_type: str, *, trainable: bool, lora: bool = False,
                  bf16_supported: bool | None = None) -> torch.dtype:
    """The dtype to load a model's weights in.

    ``dtype``: the recipe's ``model.dtype`` (``auto``, ``float32``, ``bfloat16``,
    ``float16``). ``auto`` is fp32 for weights that will be trained (full fine-tuning:
    the fp32 master copy), bf16 on a bf16-capable GPU for frozen ones (references, rollout
    engines, evaluation, a LoRA policy's base), fp32 on a CPU. An explicit dtype is
    honoured, except fp16 for weights that will be trained (refused).
    ``bf16_supported`` overrides the device check (tests decide for a GPU on a CPU)."""
    if dtype == "auto":
        capable = bf16_capable(device_type) if bf16_supported is None else (bf16_supported and device_type == "cuda")
        if trainable and not lora:
            return torch.float32
        return torch.bfloat16 if capable else torch.float32
    try:
        chosen = _NAMED[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16") from None
    if chosen == torch.float16 and trainable and not lora:
        raise PosttrainError("model.dtype: float16 weights cannot be trained without loss scaling; use auto "
                             "(fp32 weights, bf16 compute on a GPU) or float32")
    return chosen


def compute_precision(mixed_precision: str, device_type: str, *, bf16_supported: bool | None = None) -> str:
    """What accelerate's ``mixed_precision`` gets (``no`` or ``bf16``) for a stage's
    ``mixed_precision`` (``auto``, ``no``, ``bf16``): ``auto`` is ``bf16`` on a
    bf16-capable GPU and ``no`` (fp32) elsewhere. fp16 is refused (no loss scaling)."""
    if mixed_precision in ("fp16", "float16"):
        raise PosttrainError("mixed_precision: fp16 is not supported (its gradients need loss scaling, which "
                             "posttrain does not do); use bf16 or auto")
    if mixed_precision == "auto":
        capable = bf16_capable(device_type) if bf16_supported is None else (bf16_supported and device_type == "cuda")
        return "bf16" if capable else "no"
    if mixed_precision not in ("no", "bf16"):
        raise PosttrainError(f"mixed_precision must be auto, no or bf16, got {mixed_precision!r}")
    return mixed_precision


def describe(weights: torch.dtype, compute: str) -> str:
    """One line for the log: ``fp32 weights, bf16 compute``."""
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return f"{names.get(weights, str(weights))} weights, {'bf16' if compute == 'bf16' else names.get(weights)} compute"
