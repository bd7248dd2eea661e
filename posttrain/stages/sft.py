"""Supervised fine-tuning: chat data with assistant-only labels -> cross-entropy -> the
shared ``Trainer`` (checkpoints, resume, metrics) -> ``<stage>/model``."""

from __future__ import annotations

import logging
from functools import partial
from typing import Literal

from pydantic import Field

from posttrain.errors import DataError
from posttrain.logprobs import decoder_and_head, logprobs_at  # noqa: F401 (decoder_and_head: re-exported)
from posttrain.losses.sft import IGNORE_INDEX, label_positions, sft_loss
from posttrain.recipe.schema import TrainStageConfig
from posttrain.stages.registry import register_stage
from posttrain.training import LossOutput, Trainer, get_accelerator, set_seed
from posttrain.training.batching import chunked_plan, length_grouped_plan, packed_collate, packed_plan, pad_collate

log = logging.getLogger(__name__)


class SFTConfig(TrainStageConfig):
    """Supervised fine-tuning on chat data (Tülu 3 SFT). Defaults follow Tülu 3's 8B SFT
    where they carry over (lr 5e-6, 2 epochs, linear schedule, 3% warmup, 4096 tokens)."""

    learning_rate: float = Field(5e-6, gt=0)
    """Peak learning rate of AdamW (Tülu 3 8B SFT: 5e-6)."""
    num_epochs: float = Field(2.0, gt=0)
    """Passes over the training mixture (Tülu 3: 2)."""
    max_length: int = Field(4096, gt=1)
    """Longest tokenized conversation, in tokens (Tülu 3: 4096); see ``overlong``."""
    loss_reduction: Literal["mean", "sum"] = "mean"
    """How per-token losses combine in an optimizer step: ``mean`` divides their sum by the
    number of label tokens in the whole step (all micro-batches and processes, so the
    gradient does not depend on how the step is split); ``sum`` keeps the plain sum, so
    every token weighs the same whatever the batch (Tülu 3 trained with ``sum``; lower the
    learning rate accordingly)."""
    packing: bool = False
    """Pack several conversations into each row of ``max_length`` tokens, with positions
    restarting per conversation and attention kept inside each one, instead of padding
    every row to the longest; ``per_device_batch_size`` then counts rows."""
    overlong: Literal["truncate", "drop"] = "drop"
    """What to do with a conversation longer than ``max_length``: ``drop`` it, or
    ``truncate`` it to the first ``max_length`` tokens."""
    group_by_length: bool = False
    """Without packing: batch conversations of similar length together (shuffled within
    windows of 64 batches, then the batches shuffled) to cut padding."""


def sft_loss_fn(model, batch: dict) -> LossOutput:
    """Forward a (padded or packed) batch and return the summed label-token loss. When the
    batch carries ``loss_positions`` / ``loss_targets`` (``with_label_positions``), only
    those positions go through the LM head where the model allows it
    (``posttrain.logprobs.logprobs_at``)."""
    inputs = dict(attention_mask=batch.get("attention_mask"), position_ids=batch.get("position_ids"))
    if "loss_positions" in batch:
        targets = batch["loss_targets"]
        out = logprobs_at(model, batch["input_ids"], batch["loss_positions"], targets, **inputs)
        return LossOutput(-out.logprobs.sum(), targets.shape[0])
    loss_sum, n_tokens = sft_loss(model(input_ids=batch["input_ids"], use_cache=False, **inputs).logits,
                                  batch["labels"])
    return LossOutput(loss_sum, n_tokens)


def count_label_tokens(batch: dict) -> int:
    """Tokens ``sft_loss`` will count in a collated batch (every label but the first)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def with_label_positions(collate):
    """Wrap a collate function so its batches carry ``loss_positions`` and
    ``loss_targets`` (see ``posttrain.losses.sft.label_positions``), found on the CPU."""

    def wrapped(examples):
        batch = collate(examples)
        batch["loss_positions"], batch["loss_targets"] = label_positions(batch["labels"])
        return batch

    return wrapped


def make_batching(cfg: SFTConfig, examples: list[dict], pad_id: int, seed: int):
    """``(collate, batch_plan)`` for the config's packing / length grouping. With
    ``compile``, rows are padded to ``max_length`` so every batch has the same shape and
    the model compiles once (use ``packing`` too, or the padding costs FLOPs)."""
    lengths = [len(e["input_ids"]) for e in examples]
    bs = cfg.per_device_batch_size
    width = cfg.max_length if cfg.compile else None
    if cfg.packing:
        collate = partial(packed_collate, pad_id=pad_id, max_length=cfg.max_length, width=width)
        return with_label_positions(collate), packed_plan(lengths, bs, cfg.max_length, seed)
    plan = length_grouped_plan(lengths, bs, seed) if cfg.group_by_length else chunked_plan(len(examples), bs, seed)
    return with_label_positions(partial(pad_collate, pad_id=pad_id, width=width)), plan


@register_stage("sft", SFTConfig)
def run_sft(ctx) -> None:
    from posttrain.data.sft import build_sft_examples

    cfg: SFTConfig = ctx.config
    seed = ctx.seed
    acc = get_accelerator()
    set_seed(seed)
    policy = ctx.load_policy()
    tok = policy.tokenizer
    train, stats = build_sft_examples(cfg.train_data, tok, cfg.max_length, cfg.overlong, seed)
    if not train:
        raise DataError(f"stages.{ctx.name}.train_data: no examples left after tokenization "
                        f"({stats.get('dropped', 0)} longer than max_length {cfg.max_length} were dropped)")
    evals = []
    if cfg.eval_data:
        evals, _ = build_sft_examples(cfg.eval_data, tok, cfg.max_length, cfg.overlong, seed, desc="sft eval")
    if acc.is_main_process:
        ctx.metrics.log(0, **{f"data_{k}": v for k, v in stats.items() if isinstance(v, (int, float))})
    collate, plan = make_batching(cfg, train, tok.pad_token_id, seed)
    # Eval batches go through the same collate (packed eval rows give the same loss).
    Trainer(ctx, policy, train, collate, sft_loss_fn, evals, reduction=cfg.loss_reduction, batch_plan=plan,
            count_items=count_label_tokens).train()
