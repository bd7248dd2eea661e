"""Reward-model training (Bradley–Terry), as Tülu 3 and OLMo 2 trained the reward models
that initialised their PPO value models (``allenai/Llama-3.1-Tulu-3-8B-RM``,
``allenai/OLMo-2-1124-7B-RM``).

Preference pairs (the DPO data formats, read and tokenized by
``posttrain.data.preference``) -> the stage's input causal LM with a new scalar head
(``posttrain.rl.value_model``) -> each side scored at its last real token -> the
Bradley–Terry loss -> the shared ``Trainer`` (checkpoints, resume, metrics; held-out pair
accuracy as ``eval_accuracy``).

The stage produces a ``model`` that is not a policy (``produces="model"``): the reward
model is ``<stage>/model`` (a ``save_pretrained`` folder that
``AutoModelForSequenceClassification.from_pretrained`` loads, tokenizer included), the
policy passes through to the next stage unchanged, and a PPO stage names the reward model
as its value model's start with ``{from_stage: <this stage's name>}``."""

from __future__ import annotations

import logging
from functools import partial
from typing import Literal, Sequence

import torch
from pydantic import Field, field_validator

from posttrain.losses.reward_model import bradley_terry_loss, pair_score_metrics
from posttrain.recipe.schema import TrainStageConfig
from posttrain.stages.registry import register_stage
from posttrain.training import LossOutput, Trainer, get_accelerator, set_seed
from posttrain.training.batching import chunked_plan, length_grouped_plan

# posttrain.data imports the recipe schema, which imports the stage registry, which
# imports this module: data modules are imported inside the functions.

log = logging.getLogger(__name__)

class RMConfig(TrainStageConfig):
    """A Bradley–Terry reward model on chosen/rejected pairs. Defaults follow Tülu 3 8B's
    reward model (open-instruct ``docs/tulu3.md``, ``reward_modeling.py``: from the SFT
    model, lr 3e-6, linear schedule, no warmup, one epoch, 2,048 tokens; their batch was
    1 pair x 32 accumulation steps per GPU)."""

    learning_rate: float = Field(3e-6, gt=0)
    """Peak learning rate of AdamW (Tülu 3 8B RM: 3e-6)."""
    lr_scheduler: Literal["linear", "constant", "cosine"] = "linear"
    """Learning-rate shape after warmup (Tülu 3 RM: linear)."""
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    """Fraction of steps over which the learning rate rises from 0 (Tülu 3 RM: none)."""
    num_epochs: float = Field(1.0, gt=0)
    """Passes over the pairs (Tülu 3 RM: 1)."""
    max_length: int = Field(2048, gt=1)
    """Longest prompt + response, in tokens (Tülu 3 RM: 2,048)."""
    truncation: Literal["drop", "prompt_left"] = "drop"
    """Over-long pairs: ``drop`` them (default, as open-instruct's preference filter: a
    response cut from the right would be scored without its ending, where the score is
    read) or ``prompt_left`` (drop the prompt's oldest tokens first, as DPO)."""
    margin: float = 0.0
    """Bradley–Terry margin: the loss asks for ``r_chosen - r_rejected > margin``
    (Tülu 3: 0)."""
    center_coef: float = Field(0.0, ge=0)
    """Weight of ``(r_chosen + r_rejected)^2``, which keeps scores centred near 0
    (TRL's ``center_rewards_coefficient``; Eisenstein et al. 2023: 0.01; Tülu 3: 0)."""
    head_init_std: float | None = Field(None, gt=0)
    """Std of the new scalar head's normal init; default ``1/sqrt(hidden_size + 1)``
    (open-instruct, from Stiennon et al. 2020). Ignored when the input already is a reward
    model (its head is kept)."""
    group_by_length: bool = True
    """Batch pairs of similar length together to cut padding."""

    @field_validator("lora")
    @classmethod
    def _no_lora(cls, v):
        if v is not None:
            raise ValueError("the rm stage trains all weights (LoRA reward models are not supported)")
        return v

    @field_validator("compile")
    @classmethod
    def _no_compile(cls, v: bool) -> bool:
        if v:
            raise ValueError("not supported by the rm stage")
        return v


def collate(pairs: Sequence, pad_id: int) -> dict:
    """Pairs -> one right-padded batch of ``2B`` rows: every pair's prompt + chosen
    response, then every pair's prompt + rejected response."""
    from posttrain.policy import pad_sequences

    rows = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    ids, mask = pad_sequences(rows, pad_id, "right")
    return {"input_ids": ids, "attention_mask": mask, "n_tokens": int(mask.sum())}


def count_pairs(batch: dict) -> int:
    """Items of a batch for the Trainer's mean: the loss is averaged per pair."""
    return int(batch["input_ids"].shape[0] // 2)


def make_loss_fn(cfg: RMConfig):
    """``loss_fn(model, batch) -> LossOutput``: the summed Bradley–Terry loss of the
    batch's pairs and their count, with accuracy and score sums as metrics."""
    from posttrain.rl.value_model import sequence_scores

    def loss_fn(model, batch: dict) -> LossOutput:
        n = batch["input_ids"].shape[0] // 2
        scores = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
        chosen, rejected = scores[:n], scores[n:]
        out = bradley_terry_loss(chosen, rejected, cfg.margin, cfg.center_coef)
        return LossOutput(out.loss.sum(), n, pair_score_metrics(out, chosen, rejected))

    return loss_fn


@register_stage("rm", RMConfig, produces="model")
def run_rm(ctx) -> None:
    from posttrain.data.preference import build_preference_pairs, report_metrics
    from posttrain.rl.value_model import load_scalar_model

    cfg: RMConfig = ctx.config
    acc = get_accelerator()
    set_seed(ctx.seed)
    rm = load_scalar_model(ctx.input_model, revision=ctx.input_revision, dtype=ctx.recipe.model.dtype,
                           device=str(acc.device), gradient_checkpointing=cfg.gradient_checkpointing,
                           head_init_std=cfg.head_init_std)
    tok = rm.tokenizer
    train, stats = build_preference_pairs(cfg.train_data, tok, cfg.max_length, cfg.truncation, ctx.seed,
                                          desc=f"{ctx.name} train")
    data_metrics = report_metrics(stats, "data/train")
    evals: list = []
    if cfg.eval_data:
        evals, eval_stats = build_preference_pairs(cfg.eval_data, tok, cfg.max_length, cfg.truncation, ctx.seed,
                                                   desc=f"{ctx.name} eval")
        data_metrics.update(report_metrics(eval_stats, "data/eval"))
    if acc.is_main_process:
        ctx.metrics.log(0, **data_metrics)

    bs = cfg.per_device_batch_size
    plan = (length_grouped_plan([len(p) for p in train], bs, ctx.seed) if cfg.group_by_length
            else chunked_plan(len(train), bs, ctx.seed))
    Trainer(ctx, rm, train, partial(collate, pad_id=tok.pad_token_id), make_loss_fn(cfg), evals,
            reduction="mean", batch_plan=plan, count_items=count_pairs).train()
    if acc.is_main_process:
        log.info("%s: reward model in %s", ctx.name, ctx.model_dir)
