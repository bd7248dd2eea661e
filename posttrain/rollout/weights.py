"""The trainer's weights as an engine loads them: full tensors, LoRA merged in, under the
names of the plain model's ``state_dict`` (the names of a ``save_pretrained`` folder)."""

from __future__ import annotations

from typing import Iterator

import torch


@torch.no_grad()
def policy_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every weight of ``model`` (unwrapped from DDP). A peft LoRA
    model yields its base weights with each adapter's update added, computed on the fly
    (the trainer's model is not merged or copied), and no adapter tensors: what
    ``merge_and_unload().state_dict()`` would hold. Tensors are detached views or fresh
    sums; the caller must not modify them."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    if not hasattr(model, "get_base_model"):
        for name, tensor in model.state_dict().items():
            yield name, tensor.detach()
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
            continue  # merged: the base weight already holds it; disabled: it does not apply
        active = [a for a in module.active_adapters if a in module.lora_A]
        if active:
            deltas[f"{name}.base_layer.weight"] = sum(module.get_delta_weight(a) for a in active)
    for name, tensor in base.state_dict().items():
        if ".modules_to_save." in name or ".original_module." in name:
            raise NotImplementedError(f"{name}: peft modules_to_save are not supported by weight sync")
        if ".lora_" in name:
            continue
        if name in deltas:
            tensor = tensor + deltas[name].to(tensor.dtype)
        yield name.replace(".base_layer.", "."), tensor.detach()
