"""Direct Preference Optimization, as Tülu 3 did it: the reference is the stage's input
model (the SFT checkpoint), frozen. Preference pairs -> reference log-probs (one cached
pass, or live) -> one forward of chosen and rejected together -> a loss of the DPO
family -> the shared ``Trainer`` (checkpoints, resume, metrics) -> ``<stage>/model``."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from functools import partial
from typing import TYPE_CHECKING, Literal, Sequence

import torch
from pydantic import Field, field_validator

from posttrain.losses.dpo import LossParams, PairLogps, dpo_loss_names, get_dpo_loss, pair_metrics
from posttrain.recipe.schema import TrainStageConfig
from posttrain.stages.registry import register_stage
from posttrain.training import LossOutput, Trainer, get_accelerator, set_seed
from posttrain.training.batching import chunked_plan, length_grouped_plan

if TYPE_CHECKING:
    from posttrain.data.preference import PreferencePair

# posttrain.data imports the recipe schema, which imports the stage registry, which
# imports this module: data modules are imported inside the functions.

log = logging.getLogger(__name__)


class DPOConfig(TrainStageConfig):
    """Preference tuning on chosen/rejected pairs (Tülu 3 DPO). Defaults follow Tülu 3 8B:
    length-normalised DPO, beta 5, lr 5e-7, linear schedule, 10% warmup, one epoch."""

    learning_rate: float = Field(5e-7, gt=0)
    """Peak learning rate of AdamW (Tülu 3 8B DPO: 5e-7)."""
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    """Fraction of steps over which the learning rate rises linearly from 0 (Tülu 3: 0.1)."""
    loss: str = "dpo_norm"
    """Loss of the DPO family: ``dpo`` (sigmoid on summed log-ratios), ``dpo_norm``
    (log-ratios averaged per token, Tülu 3's choice), ``simpo`` (reference-free,
    length-normalised, margin ``gamma_beta_ratio``), ``ipo`` (squared, per token)."""
    beta: float = Field(5.0, gt=0)
    """Inverse temperature of the implicit reward (Tülu 3 8B with dpo_norm: 5; plain dpo
    is usually run with 0.1; simpo with about 2)."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Assumed probability that a pair's preference label is flipped (sigmoid losses):
    conservative DPO mixes the flipped loss in with this weight."""
    robust: bool = False
    """With label_smoothing: use robust DPO's unbiased estimator (Chowdhury et al. 2024)
    instead of conservative DPO's mixture."""
    gamma_beta_ratio: float = Field(0.5, ge=0)
    """SimPO's target reward margin divided by beta."""
    precompute_reference: bool = True
    """Compute the reference log-probs in one no-grad pass before training and cache them
    on disk (keyed by the reference weights, the tokenized pairs and max_length; a re-run
    reuses them). False scores the reference live in every step."""
    reference_cache_dir: str | None = None
    """Where cached reference log-probs go; default ``$POSTTRAIN_CACHE`` or
    ``~/.cache/posttrain``, under ``dpo_reference/``."""
    reference_batch_tokens: int = Field(2048, gt=0)
    """Padded tokens per batch of the reference pass (no gradients; pairs sorted by
    length). Larger is not faster on a CPU once activations outgrow its caches."""
    truncation: Literal["prompt_left", "drop"] = "prompt_left"
    """Over-long pairs: ``prompt_left`` drops the prompt's oldest tokens until the pair
    fits (keeping at least half of max_length of prompt, or all of a shorter one) and
    cuts responses from the right only if still needed; ``drop`` drops the pair."""
    group_by_length: bool = True
    """Batch pairs of similar length together (shuffled within windows of 64 batches,
    then the batches shuffled) to cut padding."""

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        if v not in dpo_loss_names():
            raise ValueError(f"unknown DPO loss {v!r} (known: {', '.join(dpo_loss_names())})")
        return v


def collate(examples: Sequence[dict], pad_id: int) -> dict:
    """Pairs (with their cached reference log-probs when there are some) -> one batch."""
    from posttrain.data.preference import collate_pairs

    batch = collate_pairs([e["pair"] for e in examples], pad_id)
    if examples[0].get("ref") is not None:
        refs = torch.tensor([e["ref"] for e in examples], dtype=torch.float32)
        batch["ref_chosen"], batch["ref_rejected"] = refs[:, 0], refs[:, 1]
    return batch


def count_pairs(batch: dict) -> int:
    """Items of a collated batch for the Trainer's mean: DPO averages per pair."""
    return int(batch["chosen_tokens"].shape[0])


def make_loss_fn(cfg: DPOConfig, reference=None):
    """``loss_fn(model, batch) -> LossOutput`` for the Trainer. ``reference(batch)``
    scores the reference live; without it the batch carries cached reference log-probs
    (or the loss needs none)."""
    from posttrain.data.reference_cache import pair_logps

    spec = get_dpo_loss(cfg.loss)
    params = LossParams(beta=cfg.beta, label_smoothing=cfg.label_smoothing, robust=cfg.robust,
                        gamma_beta_ratio=cfg.gamma_beta_ratio)

    def loss_fn(model, batch: dict) -> LossOutput:
        n = batch["chosen_tokens"].shape[0]
        logps = pair_logps(model, batch)
        ref_c = ref_r = None
        if spec.needs_reference:
            if "ref_chosen" in batch:
                ref_c, ref_r = batch["ref_chosen"], batch["ref_rejected"]
            else:
                with torch.no_grad():
                    ref = reference(batch)
                ref_c, ref_r = ref[:n], ref[n:]
        x = PairLogps(logps[:n], logps[n:], ref_c, ref_r, batch["chosen_tokens"], batch["rejected_tokens"])
        out = spec.fn(x, params)
        return LossOutput(out.loss.sum(), n, pair_metrics(out, x))

    return loss_fn


def live_reference(policy, frozen_model=None):
    """The reference scorer for ``precompute_reference: false``: the LoRA policy with its
    adapter disabled, or a frozen copy of the input model."""
    from posttrain.data.reference_cache import pair_logps

    if frozen_model is not None:
        return lambda batch: pair_logps(frozen_model, batch)

    def score(batch):
        with policy.disabled_adapter():
            return pair_logps(policy.model, batch)

    return score


def precompute_reference(ctx, policy, pairs: list[PreferencePair], desc: str) -> list[tuple[float, float]]:
    """Reference log-probs of every pair from the on-disk cache, or one batched no-grad
    pass over the (still untrained) policy, adapter disabled under LoRA, split between the
    processes of a multi-process run."""
    from posttrain.data.reference_cache import cached_reference_logps, reference_cache_key, weights_fingerprint

    cfg: DPOConfig = ctx.config
    acc = get_accelerator()
    weights = f"{weights_fingerprint(ctx.input_model, ctx.input_revision)}:{policy.model.dtype}"
    key = reference_cache_key(weights, pairs, policy.tokenizer, cfg.max_length)
    scope = policy.disabled_adapter() if policy.is_lora else nullcontext()
    # Every process calls it: each scores its share of the batches (the model is still
    # whole on each: it is sharded later, by the Trainer) and all get every score.
    with scope:
        chosen, rejected, hit = cached_reference_logps(
            policy.model, pairs, policy.tokenizer.pad_token_id, policy.device, key, cfg.reference_cache_dir,
            max_tokens=cfg.reference_batch_tokens, progress=acc.is_main_process)
    log.info("%s: reference log-probs for %d pairs %s", desc, len(pairs), "from cache" if hit else "computed")
    return list(zip(chosen.tolist(), rejected.tolist()))


@register_stage("dpo", DPOConfig)
def run_dpo(ctx) -> None:
    from posttrain.data.preference import build_preference_pairs, report_metrics

    cfg: DPOConfig = ctx.config
    seed = ctx.seed
    acc = get_accelerator()
    set_seed(seed)
    policy = ctx.load_policy()
    tok = policy.tokenizer
    truncation = cfg.truncation
    train, stats = build_preference_pairs(cfg.train_data, tok, cfg.max_length, truncation, seed,
                                          desc=f"{ctx.name} train")
    data_metrics = report_metrics(stats, "data/train")
    evals: list = []
    if cfg.eval_data:
        evals, eval_stats = build_preference_pairs(cfg.eval_data, tok, cfg.max_length, truncation, seed,
                                                   desc=f"{ctx.name} eval")
        data_metrics.update(report_metrics(eval_stats, "data/eval"))
    if acc.is_main_process:
        ctx.metrics.log(0, **data_metrics)

    needs_ref = get_dpo_loss(cfg.loss).needs_reference
    reference = None
    train_refs: list = [None] * len(train)
    eval_refs: list = [None] * len(evals)
    if needs_ref and cfg.precompute_reference:
        train_refs = precompute_reference(ctx, policy, train, f"{ctx.name} train")
        if evals:
            eval_refs = precompute_reference(ctx, policy, evals, f"{ctx.name} eval")
    elif needs_ref:
        frozen = None
        if not policy.is_lora:
            frozen = ctx.load_policy(trainable=False).model.eval().requires_grad_(False)
        reference = live_reference(policy, frozen)

    train_ex = [{"pair": p, "ref": r} for p, r in zip(train, train_refs)]
    eval_ex = [{"pair": p, "ref": r} for p, r in zip(evals, eval_refs)]
    bs = cfg.per_device_batch_size
    from posttrain.data.preference import pair_row_length

    plan = (length_grouped_plan([pair_row_length(p) for p in train], bs, seed) if cfg.group_by_length
            else chunked_plan(len(train), bs, seed))
    Trainer(ctx, policy, train_ex, partial(collate, pad_id=tok.pad_token_id), make_loss_fn(cfg, reference),
            eval_ex, reduction="mean", batch_plan=plan, count_items=count_pairs).train()
