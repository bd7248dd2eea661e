"""What the step engine does differently when accelerate shards the model (FSDP2,
DeepSpeed ZeRO-3) or replicates it over processes (DDP):

- ``enable_sharding_on_cpu``: accelerate turns FSDP and DeepSpeed on for GPU worlds
  only; torch's ``fully_shard`` and DeepSpeed's ZeRO-3 (its CPU accelerator) also run on
  CPU processes over gloo, so a CPU launch with an FSDP or DeepSpeed config gets
  accelerate's own preparation (the same code a GPU run takes), which is how the CPU
  tests prove sharded training equal to one process.
- ``full_state_dict``: a trained model's full weights under the names of the bare model
  (every process takes part in the gather).
- ``load_full_state_dict``: full weights from a checkpoint folder into the sharded model.
- ``save_optimizer_shards`` / ``load_optimizer_shards``: each process's shard of the
  optimizer state with ``torch.distributed.checkpoint`` (FSDP2: one folder, a file per
  process) or DeepSpeed's own checkpoint (which also holds its fp32 weights); resumed on
  the same world size.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from posttrain.errors import PosttrainError

log = logging.getLogger(__name__)

WRAPPER_PREFIX = "model."
"""State-dict names of a ``LogprobsModule`` start with this (its ``model`` attribute)."""


def enable_sharding_on_cpu(state) -> None:
    """With an FSDP or DeepSpeed launch config (``ACCELERATE_USE_FSDP`` /
    ``ACCELERATE_USE_DEEPSPEED`` set by ``accelerate launch --config_file
    recipes/accelerate/...``) on CPU processes, switch accelerate's state to it as accelerate
    does on GPUs. Both of accelerate's state singletons hold the distributed type:
    ``AcceleratorState`` copies ``PartialState``'s on every creation."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if torch.cuda.is_available() or state.distributed_type not in (
            DistributedType.MULTI_CPU, DistributedType.FSDP, DistributedType.DEEPSPEED):
        return  # a GPU run (accelerate did it), or one process: nothing to shard
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        wanted = DistributedType.FSDP
        if getattr(state, "fsdp_plugin", None) is None:
            from accelerate.utils import FullyShardedDataParallelPlugin

            plugin = FullyShardedDataParallelPlugin()
            if state.mixed_precision != "no":
                plugin.set_mixed_precision(state.mixed_precision)
            state.fsdp_plugin = plugin
    elif os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        wanted = DistributedType.DEEPSPEED
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is first imported
        if getattr(state, "deepspeed_plugins", None) is None:
            from accelerate.utils import DeepSpeedPlugin

            plugin = DeepSpeedPlugin()
            plugin.set_mixed_precision(state.mixed_precision)
            plugin.select(_from_accelerator_state=True)
            state.deepspeed_plugins = plugin
    else:
        return
    PartialState._shared_state["distributed_type"] = wanted
    state.distributed_type = wanted


def check_supported(acc) -> None:
    """FSDP1 is not wired (its optimizer and state-dict handling differ): one line."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP and not acc.is_fsdp2:
        raise PosttrainError("FSDP version 1 is not supported: use fsdp_version: 2 in the accelerate config "
                             "(recipes/accelerate/fsdp2.yaml)")


def load_models_whole(acc) -> None:
    """Under DeepSpeed ZeRO-3, accelerate registers its config with transformers, which then
    partitions every model loaded afterwards at load time (``zero.Init``): a frozen
    reference or a reference pass before training would see empty shards. Models load
    whole on each process instead and the trained one is partitioned when prepared, as
    FSDP2 does here."""
    if is_deepspeed(acc):
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def is_deepspeed(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.DEEPSPEED


def configure_deepspeed(acc, max_grad_norm: float | None) -> None:
    """DeepSpeed clips inside its own step: give it the model's clipping norm. Its micro
    batch size only feeds its throughput log (the engine feeds it micro-batches itself)."""
    config = acc.state.deepspeed_plugin.deepspeed_config
    config["gradient_clipping"] = float(max_grad_norm or 0.0)
    if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        config["train_micro_batch_size_per_gpu"] = 1
    if config.get("gradient_accumulation_steps", "auto") == "auto":
        config["gradient_accumulation_steps"] = 1
    if config.get("gradient_accumulation_steps") != 1:
        raise PosttrainError("the DeepSpeed config's gradient_accumulation_steps must be 1 (or auto): posttrain "
                             "accumulates micro-batches itself (gradient_accumulation_steps in the recipe)")


def is_sharded(acc) -> bool:
    """The parameters are split over processes (FSDP2 or DeepSpeed)."""
    from accelerate.utils import DistributedType

    return acc.is_fsdp2 or acc.distributed_type == DistributedType.DEEPSPEED


def strip_wrapper(state_dict: dict) -> dict:
    """Names of a ``LogprobsModule``'s state dict -> the bare model's."""
    if state_dict and all(k.startswith(WRAPPER_PREFIX) for k in state_dict):
        return {k[len(WRAPPER_PREFIX):]: v for k, v in state_dict.items()}
    return state_dict


def full_state_dict(acc, module, *, everywhere: bool = False) -> dict:
    """The full weights of a prepared ``module`` under the bare model's names; every
    process must call it. Sharded: gathered to the main process (CPU), or, with
    ``everywhere``, to every process (on its device). Not sharded: the module's own
    tensors (views, not copies)."""
    if acc.is_fsdp2:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=not everywhere)
        sd = get_model_state_dict(module, options=options)
    elif is_sharded(acc):  # DeepSpeed ZeRO-3: 16-bit weights gathered to the main process
        sd = acc.get_state_dict(module)
        if everywhere:
            holder = [sd if acc.is_main_process else None]
            torch.distributed.broadcast_object_list(holder, src=0)
            sd = holder[0]
    else:
        sd = acc.unwrap_model(module).state_dict()
    return strip_wrapper(sd)


def load_full_state_dict(acc, module, folder: Path) -> None:
    """Load the full weights of a ``save_pretrained`` folder into a sharded ``module``
    (each process reads the files and keeps its shard)."""
    from safetensors.torch import load_file

    shards = sorted(Path(folder).glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights to resume from")
    sd: dict[str, torch.Tensor] = {}
    for shard in shards:
        sd.update(load_file(str(shard)))
    names = [k for k, _ in module.named_parameters()] + [k for k, _ in module.named_buffers()]
    if names and all(k.startswith(WRAPPER_PREFIX) for k in names):
        sd = {WRAPPER_PREFIX + k: v for k, v in sd.items()}
    if is_deepspeed(acc):
        return  # its own checkpoint restores the weights (load_optimizer_shards)
    if acc.is_fsdp2:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        result = set_model_state_dict(module, sd, options=StateDictOptions(full_state_dict=True, strict=False))
        missing = [k for k in result.missing_keys if not _tied(module, k)]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"{folder}: weights do not match the model (missing {missing[:3]}, "
                               f"unexpected {list(result.unexpected_keys)[:3]})")
        return
    raise NotImplementedError(f"loading full weights under {acc.distributed_type}")


def _tied(module, name: str) -> bool:
    inner = getattr(module, "model", module)
    tied = getattr(inner, "_tied_weights_keys", None) or []
    return any(name.endswith(t) for t in tied)


def _optimizer_dir(folder: Path, name: str, main: bool) -> Path:
    return Path(folder) / ("optimizer_shards" if main else f"optimizer-{name}_shards")


def save_optimizer_shards(state_dir: Path, name: str, main: bool, module, optimizer) -> None:
    """Every process writes its shard of ``optimizer``'s state (collective)."""
    if _is_deepspeed_engine(module):
        module.save_checkpoint(str(Path(state_dir) / "deepspeed"), tag=name)
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd = get_optimizer_state_dict(module, _bare(optimizer))
    dcp.save({"optimizer": sd}, checkpoint_id=str(_optimizer_dir(state_dir, name, main)))


def load_optimizer_shards(state_dir: Path, name: str, main: bool, module, optimizer) -> None:
    """Every process reads its shard back into ``optimizer`` (collective). DeepSpeed's
    checkpoint restores its weights too (its fp32 master copy)."""
    if _is_deepspeed_engine(module):
        path, _ = module.load_checkpoint(str(Path(state_dir) / "deepspeed"), tag=name, load_optimizer_states=True,
                                         load_lr_scheduler_states=False, load_module_strict=True)
        if path is None:
            raise FileNotFoundError(f"{state_dir}: no DeepSpeed checkpoint {name!r}")
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    folder = _optimizer_dir(state_dir, name, main)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: the checkpoint has no optimizer shards (was it written unsharded?)")
    bare = _bare(optimizer)
    holder: dict[str, Any] = {"optimizer": get_optimizer_state_dict(module, bare)}
    dcp.load(holder, checkpoint_id=str(folder))
    set_optimizer_state_dict(module, bare, holder["optimizer"])


def _is_deepspeed_engine(module) -> bool:
    return hasattr(module, "save_checkpoint") and hasattr(module, "zero_optimization_stage")


def _bare(optimizer):
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer``."""
    return getattr(optimizer, "optimizer", optimizer)
