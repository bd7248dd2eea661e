"""The ``rlvr`` stage runner: wiring only. Prompts -> verifier pool -> rollout engine ->
policy (+ frozen reference when ``beta > 0`` without LoRA) -> the algorithm's models and
losses -> ``OnlineTrainer`` (checkpoints, exact resume, metrics) with the rollout source,
the weight sync and the in-loop eval -> ``<stage>/model``.

Order matters: the verifier workers fork first (a small, clean process), then vLLM's
engine process starts (it loads the model in its own process), then the policy loads.
A recipe whose prompts use the ``code`` verifier stops before any of that unless its
sandbox can start in ``code_sandbox`` mode.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from posttrain.stages.registry import register_stage
from posttrain.stages.rlvr.config import RLVRConfig

log = logging.getLogger(__name__)


def total_steps(cfg: RLVRConfig, n_prompts: int) -> int:
    """RL steps of the stage: ``max_steps``, else ``num_epochs`` passes over the prompts."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.num_epochs * n_prompts / cfg.prompts_per_step))


def check_code_verifier(cfg: RLVRConfig, prompts, where: str) -> None:
    """Model-written code runs only in the sandbox mode the recipe allows: fail in one
    line, before any model loads, when it cannot start (e.g. no bubblewrap)."""
    names = {n.lower() for p in prompts for n in (p.dataset if isinstance(p.dataset, list) else [p.dataset])}
    if "code" not in names:
        return
    from posttrain.errors import PosttrainError
    from posttrain.verifiers.code import CodeSandboxUnavailable, check_code_sandbox

    try:
        check_code_sandbox(cfg.code_sandbox)
    except CodeSandboxUnavailable as e:
        raise PosttrainError(f"{where}.code_sandbox: {e}") from None


def model_dims(model) -> tuple[int, int] | None:
    """``(hidden size, intermediate size)`` of a transformers model, for the layout choice."""
    config = getattr(model, "config", None)
    hidden, ffn = getattr(config, "hidden_size", None), getattr(config, "intermediate_size", None)
    return (int(hidden), int(ffn)) if hidden and ffn else None


def logprob_fns(cfg: RLVRConfig, policy, *, need_old: bool):
    """``(reference, old_logprobs)`` functions for the source: no-grad log-probs of the
    responses at the sampling temperature, or None where the step needs none."""
    from posttrain.stages.rlvr.loss import sample_logprobs

    kw = dict(pad_id=policy.tokenizer.pad_token_id, temperature=cfg.temperature, batch_size=cfg.per_device_batch_size,
              share=cfg.share_prompts, dims=model_dims(policy.model))
    reference = old = None
    if cfg.beta > 0:
        if policy.is_lora:
            def reference(models, prompts, responses):
                with policy.disabled_adapter():  # the base model, no second copy
                    return sample_logprobs(policy.model, prompts, responses, **kw)
        else:
            def reference(models, prompts, responses):
                return sample_logprobs(models["reference"], prompts, responses, **kw)
    if need_old:
        def old(models, prompts, responses):
            # the prepared model: under FSDP2/ZeRO-3 only its forward gathers the shards
            return sample_logprobs(models["policy"], prompts, responses, **kw)
    return reference, old


def needs_old_logprobs(cfg: RLVRConfig) -> bool:
    """Old log-probs need their own pass only when the policy moves before the last
    minibatch is trained (several passes or minibatches), or a masking correction must
    know its mask before the forward; otherwise the loss's own forward gives them."""
    return cfg.num_iterations > 1 or cfg.num_minibatches > 1 or cfg.rollout_correction in ("mask_token",
                                                                                           "mask_sequence")


@dataclass
class RLVRRun:
    """The stage's parts, built and ready to train (``build_run``); ``close()`` stops the
    engine and the verifier workers."""

    trainer: Any
    source: Any
    engine: Any
    scorer: Any
    sync: Any
    evaluate: Any
    policy: Any

    def close(self) -> None:
        try:
            if self.engine is not None:
                self.engine.close()
        finally:
            self.scorer.close()


def build_run(ctx) -> RLVRRun:
    """Everything the stage trains with, built in order (module docstring). Bad input
    (prompts, verifiers, the code sandbox, engine setup) fails here before any model
    loads."""
    from functools import partial

    import torch
    from transformers import AutoTokenizer

    from posttrain.data.prompts import build_prompts
    from posttrain.policy import prepare_tokenizer
    from posttrain.stages.rlvr.algorithm import get_algorithm
    from posttrain.stages.rlvr.batch import collate_samples
    from posttrain.stages.rlvr.engines import (check_engine_setup, connect_vllm_server, hf_engine, prompt_limit,
                                               start_vllm)
    from posttrain.stages.rlvr.evaluation import InLoopEval
    from posttrain.stages.rlvr.source import RolloutSource
    from posttrain.training import OnlineTrainer, get_accelerator
    from posttrain.training.sharding import is_sharded
    from posttrain.training.weight_sync import FullWeightSync
    from posttrain.verifiers.scoring import Scorer

    cfg: RLVRConfig = ctx.config
    where = f"stages.{ctx.name}"
    acc = get_accelerator()
    check_engine_setup(cfg, ctx, acc.num_processes)
    tokenizer = AutoTokenizer.from_pretrained(ctx.input_model, revision=ctx.input_revision)
    prepare_tokenizer(tokenizer)
    max_prompt = prompt_limit(cfg, ctx)
    prompts, stats = build_prompts(cfg.train_data, tokenizer, max_prompt, ctx.seed, what=f"{where}.train_data")
    eval_prompts = []
    if cfg.eval_prompts:
        eval_prompts, _ = build_prompts(cfg.eval_prompts, tokenizer, max_prompt, ctx.seed,
                                        what=f"{where}.eval_prompts", shuffle=False)
        eval_prompts = eval_prompts[: cfg.eval_limit]
    check_code_verifier(cfg, prompts + eval_prompts, where)
    steps = total_steps(cfg, len(prompts))
    stop = (tokenizer.eos_token_id,)

    scorer = Scorer(workers=cfg.verifier_workers, timeout=cfg.verifier_timeout,
                    reasoning_format=cfg.reasoning_format).start()  # forked before any model exists
    engine = None
    try:
        engine = start_vllm(cfg, ctx, tokenizer, max_prompt) if cfg.engine == "vllm" else None
        if cfg.engine == "vllm_server":
            engine = connect_vllm_server(cfg, tokenizer)
        policy = ctx.load_policy()
        frozen = {}
        if cfg.beta > 0 and not policy.is_lora:
            frozen["reference"] = ctx.load_policy(trainable=False).model
        if engine is None:
            # Sharded (FSDP2/ZeRO-3), each process holds a shard of the trained model: the
            # engine needs a whole copy of its own, refreshed by the sync after each update.
            engine = hf_engine(cfg, tokenizer, policy.model, own_copy=ctx if is_sharded(acc) else None)
        gather = None
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            # every process's rewards (shares may differ in size by a group)
            gather = lambda t: torch.tensor(gather_object(t.tolist()))  # noqa: E731
        algorithm = get_algorithm(cfg.algorithm)(cfg, gather=gather, ctx=ctx)
        frozen.update(algorithm.frozen_models())
        reference, old = logprob_fns(cfg, policy, need_old=needs_old_logprobs(cfg))
        verifier_names = {n for p in prompts for n in (p.dataset if isinstance(p.dataset, list) else [p.dataset])}
        source = RolloutSource(cfg, prompts, engine, scorer, algorithm, seed=ctx.seed, stop_token_ids=stop,
                               reference=reference, old_logprobs=old, verifier_names=sorted(verifier_names),
                               rank=acc.process_index, world=acc.num_processes)
        # One server for all processes: the main one pushes the weights.
        sync = FullWeightSync(engine, "policy", every_process=cfg.engine != "vllm_server")
        evaluate = None
        if eval_prompts:
            evaluate = InLoopEval(eval_prompts, engine, scorer,
                                  max_new_tokens=cfg.eval_max_new_tokens or cfg.max_new_tokens,
                                  temperature=cfg.temperature, samples=cfg.eval_samples, stop_token_ids=stop,
                                  seed=ctx.seed, weights=cfg.verifier_weights, is_main=acc.is_main_process)
        trainer = OnlineTrainer(
            ctx, algorithm.online_models(policy), source,
            partial(collate_samples, pad_id=tokenizer.pad_token_id, correction=cfg.rollout_correction,
                    tis_cap=cfg.tis_cap, share=cfg.share_prompts, dims=model_dims(policy.model)),
            steps=steps, micro_batch_size=cfg.per_device_batch_size, passes=cfg.num_iterations,
            minibatches=cfg.num_minibatches, frozen=frozen,
            # One minibatch: the order within it changes nothing, and keeping each group's
            # samples together lets them share their prompt's forward (batch.py).
            shuffle=cfg.num_minibatches > 1, after_update=sync.after_update,
            after_resume=sync.after_resume, evaluate=evaluate)
        sync.bind(trainer.engine)
    except BaseException:
        RLVRRun(None, None, engine, scorer, None, None, None).close()
        raise
    if acc.is_main_process:
        ctx.metrics.log(0, **{f"prompts/{k}": v for k, v in stats.items()}, **{"prompts/steps": steps})
    return RLVRRun(trainer, source, engine, scorer, sync, evaluate, policy)


@register_stage("rlvr", RLVRConfig, produces="policy")
def run_rlvr(ctx) -> None:
    from posttrain.training.checkpoint import latest_checkpoint

    run = build_run(ctx)
    try:
        cfg = ctx.config
        if run.evaluate is not None and cfg.eval_at_start and latest_checkpoint(ctx.checkpoint_dir) is None:
            row = run.evaluate(0)
            if row:
                ctx.metrics.log(0, **row)
        run.trainer.train()
    finally:
        run.close()
