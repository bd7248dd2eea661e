"""The stage's rollout engine and how it follows the policy.

- ``hf``: samples from the trainer's own model object (``make_engine("hf", model=...)``),
  so the engine always holds the current weights and a sync costs nothing; under
  FSDP2/ZeRO-3 it holds a copy of its own, refreshed after each step.
- ``vllm``: vLLM in its own process, started from the stage's input folder; after the
  last update of every step (before the next rollout) and after a resume, the policy's
  full weights (LoRA merged) are pushed to it (``posttrain.rollout``: ``/dev/shm``
  safetensors + ``reload_weights`` on CPU, CUDA IPC on a GPU). vLLM's engine process
  must start under an ``if __name__ == "__main__":`` entry point (``posttrain`` is one).
- ``vllm_server``: a vLLM server process (``posttrain.rollout.vllm_server``), possibly on
  another node; every process samples from it, the main process pushes the weights.

The sync itself is ``posttrain.training.weight_sync.FullWeightSync`` (gathers sharded
weights first).
"""

from __future__ import annotations

import logging

from posttrain.errors import PosttrainError

log = logging.getLogger(__name__)


def check_engine_setup(cfg, ctx, world: int) -> None:
    """One-line errors for engine setups the stage cannot run, before anything loads."""
    where = f"stages.{ctx.name}"
    if cfg.engine == "vllm":
        if world > 1:
            raise PosttrainError(f"{where}.engine: vllm with {world} processes is not supported yet; use engine: hf "
                                 "or one process")
        if ctx.input_revision is not None:
            raise PosttrainError(f"{where}.engine: vllm loads a folder or hub id, not a hub revision "
                                 f"({ctx.input_model}@{ctx.input_revision}); start from a folder")


def longest_response(cfg) -> int:
    """Tokens of the longest response the stage samples (training or in-loop eval)."""
    return max(cfg.max_new_tokens, cfg.eval_max_new_tokens or 0)


def prompt_limit(cfg, ctx) -> int:
    """The longest prompt the stage keeps: ``max_length``, lowered where a prompt and the
    longest response would not fit the model's positions (vLLM refuses such a context;
    a model never trained on it would sample nonsense), so too-long prompts are dropped
    and counted like any over ``max_length``."""
    from transformers import AutoConfig

    response = longest_response(cfg)
    positions = getattr(AutoConfig.from_pretrained(ctx.input_model, revision=ctx.input_revision),
                        "max_position_embeddings", None)
    if not positions or cfg.max_length + response <= positions:
        return cfg.max_length
    if response >= positions:
        raise PosttrainError(f"stages.{ctx.name}.max_new_tokens: {response}-token responses leave no room for a "
                             f"prompt in the model's {positions} positions")
    log.info("stages.%s: prompts up to %d tokens (max_length %d + %d response tokens exceed the model's %d "
             "positions)", ctx.name, positions - response, cfg.max_length, response, positions)
    return positions - response


def start_vllm(cfg, ctx, tokenizer, max_prompt_tokens: int):
    """The vLLM engine on the stage's input model (call before loading the policy: its
    process starts while this one loads)."""
    from posttrain.rollout import make_engine

    max_model_len = max_prompt_tokens + longest_response(cfg)
    return make_engine("vllm", ctx.input_model, tokenizer, dtype=ctx.recipe.model.dtype, seed=ctx.seed,
                       max_model_len=max_model_len, gpu_memory_utilization=cfg.vllm.gpu_memory_utilization,
                       enable_sleep_mode=cfg.vllm.sleep_between_rollouts, kv_cache_gib=cfg.vllm.kv_cache_gb)


def connect_vllm_server(cfg, tokenizer):
    """The ``vllm_server`` engine: a client of the server at ``vllm.server_url``."""
    from posttrain.rollout import make_engine

    return make_engine("vllm_server", None, tokenizer, server_url=cfg.vllm.server_url)


def hf_engine(cfg, tokenizer, model, *, own_copy=None):
    """The ``hf`` engine on the trained model object itself; with ``own_copy`` (the stage
    context), on its own copy of the stage's input model instead, which the weight sync
    refreshes (sharded training: no process holds the whole trained model)."""
    from posttrain.rollout import make_engine
    from posttrain.training import get_accelerator

    if own_copy is not None:
        return make_engine("hf", own_copy.input_model, tokenizer, dtype=own_copy.recipe.model.dtype,
                           device=str(get_accelerator().device), batch_size=cfg.generation_batch_size)
    return make_engine("hf", None, tokenizer, model=model, batch_size=cfg.generation_batch_size)
