"""On-policy preference pairs as a recipe stage: sample ``n`` responses per prompt from the
stage's input model (the previous training stage's output), score them with the prompts'
verifiers, and pair a passing sample (chosen) with a failing one (rejected) for each
prompt, as Tülu 3 built its on-policy preference data. It trains nothing: the input model
passes through to the next stage, which reads the pairs with ``{from_stage: <name>}``.

Writes ``<stage>/samples.jsonl`` (every scored sample), ``<stage>/data.jsonl`` (the
pairs, in the Tülu chosen/rejected format) and, in ``metrics.jsonl``, pass@1/pass@n of
the input model and the pair counts. Sampling runs on the main process only; other
processes wait for it."""

from __future__ import annotations

import logging
import sys
from typing import Literal

from pydantic import Field

from posttrain.recipe.schema import DataSource, StageConfig
from posttrain.stages.registry import register_stage

# posttrain.data imports the recipe schema, which imports the stage registry, which
# imports this module: data modules are imported inside the functions.

log = logging.getLogger(__name__)


class PairsConfig(StageConfig):
    """Sample from the current model, score with the verifiers, write chosen/rejected pairs
    (passing vs failing sample of each prompt) for a later DPO stage."""

    prompt_data: list[DataSource]
    """Prompt rows: ``messages`` (prompt turns) or ``prompt``, plus ``dataset`` (verifier
    name or list) and ``ground_truth``, as RLVR data. Mixed like SFT data (``amount``) and
    shuffled with the stage's seed."""
    n: int = Field(8, ge=2)
    """Samples per prompt; a prompt gives a pair only if some pass and some fail."""
    engine: Literal["hf", "vllm"] = "hf"
    """Rollout engine: ``hf`` (transformers generate, the CPU default) or ``vllm``."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature (greedy decoding would give n equal samples)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    top_k: int = Field(0, ge=0)
    """Keep only the k most likely tokens; 0 disables it."""
    max_new_tokens: int = Field(256, gt=0)
    """Longest response, in tokens."""
    max_prompt_length: int = Field(1024, gt=1)
    """Prompts longer than this many tokens are dropped and counted."""
    batch_size: int = Field(64, gt=0)
    """Prompts per engine call; each call's samples are scored while the next generates."""
    threshold: float = 1.0
    """A sample passes when its verifier score is at least this (1.0: fully correct) and
    fails below it."""
    pairs_per_prompt: int = Field(1, gt=0)
    """Distinct (chosen, rejected) combinations drawn per prompt, at most."""
    verifier_workers: int | None = Field(None, ge=0)
    """Verifier worker processes; default: this machine's CPUs divided among its ranks."""
    verifier_timeout: float = Field(30.0, gt=0)
    """Seconds a verifier call may take before its sample scores 0."""
    reasoning_format: bool = True
    """Verifiers judge the final answer after ``</think>`` (inside ``<answer>`` when present)
    and score unfinished thinking 0; false: they judge the whole response."""
    kv_cache_gb: int | None = Field(None, gt=0)
    """``engine: vllm`` on a CPU: KV-cache size in GiB (``VLLM_CPU_KVCACHE_SPACE``); null
    keeps the environment's value, else 1."""


@register_stage("pairs", PairsConfig, produces="data")
def run_pairs(ctx) -> None:
    from posttrain.data.onpolicy_pairs import build_pairs
    from posttrain.data.prompts import build_prompts
    from posttrain.errors import PosttrainError
    from posttrain.generation import generate_samples, load_tokenizer, make_generation_engine, make_sampling, \
        summarize_samples
    from posttrain.jsonl import write_jsonl_atomic
    from posttrain.training import get_accelerator
    from posttrain.verifiers.scoring import Scorer

    if not get_accelerator().is_main_process:
        return  # the pipeline's barrier after the stage waits for the main process
    cfg: PairsConfig = ctx.config
    where = f"stages.{ctx.name}"
    if ctx.input_revision is not None:
        raise PosttrainError(f"{where}: the rollout engines load a folder or hub id, not a hub revision "
                             f"({ctx.input_model}@{ctx.input_revision}); start from a folder")
    # Forked before any model or engine exists in this process.
    with Scorer(workers=cfg.verifier_workers, timeout=cfg.verifier_timeout,
                reasoning_format=cfg.reasoning_format).start() as scorer:
        tokenizer = load_tokenizer(ctx.input_model)
        prompts, stats = build_prompts(cfg.prompt_data, tokenizer, cfg.max_prompt_length, ctx.seed,
                                       what=f"{where}.prompt_data")
        rows = [{**p.extra, "messages": p.messages, "dataset": p.dataset, "ground_truth": p.ground_truth}
                for p in prompts]
        sampling = make_sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                 top_k=cfg.top_k, seed=ctx.seed, tokenizer=tokenizer)
        engine = make_generation_engine(cfg.engine, ctx.input_model, tokenizer, dtype=ctx.recipe.model.dtype,
                                        kv_cache_gb=cfg.kv_cache_gb)
        try:
            samples = generate_samples(engine, rows, [p.token_ids for p in prompts], [p.messages for p in prompts],
                                       n=cfg.n, sampling=sampling, scorer=scorer, batch_size=cfg.batch_size)
        finally:
            engine.close()
    write_jsonl_atomic(ctx.stage_dir / "samples.jsonl", samples)
    summary = summarize_samples(samples, cfg.n, cfg.threshold)
    pairs, report = build_pairs(samples, threshold=cfg.threshold, seed=ctx.seed,
                                pairs_per_prompt=cfg.pairs_per_prompt, source=str(ctx.stage_dir / "samples.jsonl"))
    ctx.metrics.log(0, **{f"prompts/{k}": v for k, v in stats.items()},
                    **{f"samples/{k}": v for k, v in summary.items() if k.startswith(("pass@", "mean_score"))},
                    **report.metrics("pairs"))
    if not pairs:
        raise PosttrainError(f"{where}: no pairs: {report.summary()} (a pair needs a prompt with both passing "
                             f"and failing samples; try a higher n or temperature, or another threshold)")
    write_jsonl_atomic(ctx.data_path, pairs)
    ks = " ".join(f"{k} {v:.4f}" for k, v in summary.items() if k.startswith("pass@"))
    print(f"[{ctx.name}] input model {ks} on {summary['prompts']} prompts; {report.summary()}", file=sys.stderr)
