"""Run under a multi-process launch (DDP or FSDP2, CPU processes over gloo): checks of the
step engine's preparation that need a real process group. Each process writes
``OUT/rank<r>.json``; ``test_engine_distributed.py`` asserts on them.

    python engine_checks.py OUT SMALL_MODEL_DIR

Every process computes the same micro-batch, so DDP's and FSDP's gradient averaging gives
back the one-process gradient, which each process also computes on a plain copy of the
model (no wrapper, no process group) to compare with.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def _torch_optimizer_params(tm) -> list:
    """The tensors the optimizer updates: the prepared parameters, or DeepSpeed ZeRO-3's
    flat fp32 partitions (its master copy of this process's share)."""
    zero = getattr(tm.optimizer, "optimizer", None)
    if hasattr(zero, "fp32_partitioned_groups_flat"):
        return list(zero.fp32_partitioned_groups_flat)
    return [p for g in tm.optimizer.param_groups for p in g["params"]]


def main(out: Path, model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from posttrain.logprobs import LogprobsModule, logprobs_at
    from posttrain.training import LossOutput, OptimizerSettings, StepEngine

    engine = StepEngine(mixed_precision="no")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tm = engine.add_model("policy", model, OptimizerSettings(learning_rate=1e-3, max_grad_norm=0.5,
                                                             lr_scheduler="constant"), total_steps=2)
    report: dict = {"world": engine.world, "sharded": engine.sharded,
                    "module_type": type(tm.module).__name__,
                    "wraps_logprobs_module": isinstance(getattr(tm.module, "module", tm.module), LogprobsModule)}

    # The optimizer holds exactly the prepared (wrapped or sharded) parameters.
    prepared = [p for p in tm.module.parameters() if p.requires_grad]
    held = [p for g in tm.optimizer.param_groups for p in g["params"]]
    report["optimizer_holds_prepared"] = {id(p) for p in held} == {id(p) for p in prepared} and len(held) == len(
        prepared)
    report["param_types"] = sorted({type(p).__name__ for p in held})
    # the elements this process's optimizer steps: all of them (DDP), or its shard
    report["optimizer_numel"] = sum(int(getattr(p, "_local_tensor", p).numel()) for p in _torch_optimizer_params(tm))
    report["model_numel"] = sum(int(p.numel()) for p in plain.parameters())

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 500, (3, 12), generator=g)
    positions = torch.tensor([2, 5, 11, 13, 20, 30, 35])  # flat indices into 3 x 12
    targets = torch.randint(5, 500, (7,), generator=g)

    # The LM head runs on the requested positions only, through the wrapper's forward.
    head_rows: list[int] = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda mod, args, out: head_rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))

    def loss_fn(module, batch):
        lp = logprobs_at(module, batch["input_ids"], batch["positions"], batch["targets"])
        return LossOutput(-lp.logprobs.sum(), lp.logprobs.numel())

    batch = {"input_ids": ids, "positions": positions, "targets": targets}
    # mean over the step's items: each process's 7 tokens, averaged over processes = the
    # mean over one process's 7 (every process has the same batch)
    result = engine.step("policy", [batch], loss_fn, count_items=lambda b: int(b["targets"].numel()))
    handle.remove()
    report["head_rows"] = head_rows
    report["grad_norm"] = float(result.grad_norm)
    report["loss_sum"] = float(result.loss_sum)

    # The same on the plain model: full logits (generic path), one process.
    lp = logprobs_at(plain, ids, positions, targets, generic=True).logprobs
    (-lp.mean()).backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in plain.parameters() if p.grad is not None]))
    report["plain_grad_norm"] = float(norm)
    report["plain_loss_sum"] = float(-lp.sum())

    # After the step (clipped to 0.5): the full weights equal one process's update of the
    # plain model with the same clipped gradient.
    torch.nn.utils.clip_grad_norm_(plain.parameters(), 0.5)
    opt = torch.optim.AdamW(plain.parameters(), lr=1e-3)
    opt.step()
    full = engine.full_state_dict("policy", everywhere=True)
    expected = plain.state_dict()
    report["same_names"] = sorted(full) == sorted(expected)
    report["weights_max_diff"] = max(float((full[k].float().cpu() - expected[k]).abs().max()) for k in expected)
    (out / f"rank{engine.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
