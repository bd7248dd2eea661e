"""PPO with a value model (``algorithm: ppo``): Tülu 3's RLVR (and OLMo 2 7B/13B's).

Two trained models, each with its own AdamW, learning rate and schedule, stepped one
after the other on every minibatch by the online trainer:

- the policy, with the clipped surrogate (``posttrain.losses.policy``; Tülu 3: clip 0.2)
  on whitened GAE advantages; the KL to the reference is in the reward by default
  (``ppo.kl_in_reward``), else in the loss as GRPO;
- the value model (``posttrain.rl.value_model.TokenValueModel``): a scalar head on a
  transformer, started from a reward model (a folder or hub id, or an earlier ``rm``
  stage: ``value_model: {from_stage: rm}``) or from the stage's input policy with a new
  head; loss ``vf_coef x`` the clipped value loss (``posttrain.losses.value``), aggregated
  like the policy loss.

Before the updates of a step (``sample_fields``, no gradient): the policy's log-probs of
its samples (when the step did not compute them already), the value model's value of
every response token (the state before the token: the position that predicts it), then
``ppo_targets``: per-token rewards, GAE, returns, whitening. The step's statistics
(explained variance, KL penalty, ...) go to the step's metrics; the value loss's
(``value/loss``, ``value/clip_frac``, ``value/pred_mean``, ...) are logged per update.

Whitening runs over each process's own samples (one process: the whole batch).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from posttrain.errors import PosttrainError
from posttrain.losses.policy import aggregate
from posttrain.losses.value import clipped_value_loss
from posttrain.stages.rlvr.algorithm import register_algorithm
from posttrain.stages.rlvr.batch import pad_tokens
from posttrain.stages.rlvr.loss import count_items, make_policy_loss, per_sample_outputs, sample_logprobs
from posttrain.stages.rlvr.ppo_targets import ppo_targets
from posttrain.stages.rlvr.rollouts import ScoredRollouts
from posttrain.training import LossOutput


def sample_values(model, prompts, responses, pad_id: int, *, batch_size: int, share: str = "auto",
                  dims: tuple[int, int] | None = None) -> list[torch.Tensor]:
    """The value model's ``(L,)`` values of each response's tokens (CPU float32), in the
    training forward's layout (``loss.per_sample_outputs``)."""
    def forward(m, b):
        return m(input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"],
                 positions=b["positions"])

    return per_sample_outputs(model, prompts, responses, pad_id, forward, batch_size=batch_size, share=share,
                              dims=dims)


def make_value_loss(cfg):
    """``loss_fn(value_model, batch) -> LossOutput``: ``vf_coef x`` the clipped value loss
    of the micro-batch's loss tokens, aggregated as the policy loss (``loss_aggregation``).
    Metrics (per item): ``loss_unscaled``, ``clip_frac``, ``pred_mean``, ``returns_mean``."""
    ppo = cfg.ppo

    def loss_fn(model, batch: dict) -> LossOutput:
        flat = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"], positions=batch["positions"])
        mask = batch["response_mask"]
        values = flat.new_zeros(mask.shape).masked_scatter(mask, flat.float())
        out = clipped_value_loss(values, batch["values"], batch["returns"], batch["loss_mask"], ppo.value_clip)
        total, n = aggregate(out.per_token, batch["loss_mask"], cfg.loss_aggregation, cfg.max_new_tokens)
        metrics = {("loss_unscaled" if k == "value/loss" else k.removeprefix("value/")): v
                   for k, v in out.metrics.item_sums(n).items()}
        return LossOutput(ppo.vf_coef * total, n, metrics)

    return loss_fn


def value_model_source(cfg, ctx) -> str:
    """Where the value model starts: the recipe's ``ppo.value_model`` (a folder or hub id,
    or an earlier stage's model), else the stage's input policy."""
    if cfg.ppo.value_model is None:
        return ctx.input_model
    return ctx.resolve_model(cfg.ppo.value_model)


class PPO:
    """The ``ppo`` algorithm (module docstring)."""

    def __init__(self, cfg, *, ctx=None, gather=None):
        if ctx is None:
            raise ValueError("PPO needs the stage context (where its value model starts)")
        self.cfg, self.ctx = cfg, ctx
        self.pad_id: int | None = None
        self.dims = None
        self.last_metrics: dict[str, float] = {}

    def online_models(self, policy) -> list:
        from posttrain.rl.value_model import TokenValueModel, load_scalar_model
        from posttrain.stages.rlvr.runner import model_dims
        from posttrain.training import OnlineModel, OptimizerSettings, get_accelerator, set_seed

        cfg, ctx = self.cfg, self.ctx
        where = f"stages.{ctx.name}.ppo.value_model"
        source = value_model_source(cfg, ctx)
        revision = ctx.input_revision if cfg.ppo.value_model is None else None
        set_seed(ctx.seed)  # a new value head is drawn from the global RNG
        try:
            scalar = load_scalar_model(source, revision=revision, dtype=ctx.recipe.model.dtype,
                                       device=str(get_accelerator().device),
                                       gradient_checkpointing=cfg.gradient_checkpointing)
        except OSError as e:
            raise PosttrainError(f"{where}: cannot load {source}: {str(e).splitlines()[0]}") from None
        if scalar.tokenizer.get_vocab() != policy.tokenizer.get_vocab():
            raise PosttrainError(f"{where}: {source} has another tokenizer than the policy; the value model "
                                 "must read the policy's tokens")
        self.pad_id = policy.tokenizer.pad_token_id
        self.dims = model_dims(policy.model)
        value = TokenValueModel(scalar.model)
        lr = cfg.ppo.value_learning_rate or cfg.learning_rate
        return [
            OnlineModel("policy", policy.model, OptimizerSettings.from_config(cfg),
                        loss_fn=make_policy_loss(cfg, kl_in_loss=not cfg.ppo.kl_in_reward),
                        count_items=count_items(cfg.loss_aggregation), save=policy.save),
            OnlineModel("value", value, OptimizerSettings.from_config(cfg, learning_rate=lr),
                        loss_fn=make_value_loss(cfg), count_items=count_items(cfg.loss_aggregation),
                        save=scalar.save),
        ]

    def frozen_models(self) -> dict[str, Any]:
        return {}

    def sample_fields(self, rollouts: ScoredRollouts, models: Mapping[str, Any]) -> dict[str, list[torch.Tensor]]:
        cfg = self.cfg
        prompts, responses = rollouts.prompt_ids, rollouts.response_ids
        kw = dict(batch_size=cfg.per_device_batch_size, share=cfg.share_prompts, dims=self.dims)
        if rollouts.old_logprobs is None:
            # The KL in the reward needs the sampling policy's log-probs now; the loss then
            # reads them too (the same numbers its first forward would give).
            rollouts.old_logprobs = sample_logprobs(models["policy"], prompts, responses, self.pad_id,
                                                    temperature=cfg.temperature, **kw)
        values = sample_values(models["value"], prompts, responses, self.pad_id, **kw)
        width = max(1, max(len(r) for r in responses))
        lengths = torch.tensor([len(r) for r in responses])
        mask = torch.arange(width)[None, :] < lengths[:, None]
        trained = torch.ones(len(responses), dtype=torch.bool)
        if cfg.mask_truncated:
            trained = rollouts.stopped.bool()
        ref = None if rollouts.ref_logprobs is None else pad_tokens(rollouts.ref_logprobs, width)
        t = ppo_targets(rollouts.rewards, pad_tokens(values, width), mask, trained=trained,
                        logprobs=pad_tokens(rollouts.old_logprobs, width), ref_logprobs=ref, beta=cfg.beta,
                        kl_estimator=cfg.kl_estimator, kl_in_reward=cfg.ppo.kl_in_reward, gamma=cfg.ppo.gamma,
                        lam=cfg.ppo.lam, whiten_advantages=cfg.ppo.whiten_advantages)
        self.last_metrics = t.metrics
        n = lengths.tolist()
        return {"advantages": [t.advantages[i, : n[i]] for i in range(len(n))],
                "returns": [t.returns[i, : n[i]] for i in range(len(n))], "values": values}

    def batch_metrics(self) -> dict[str, float]:
        """The last ``sample_fields``' batch statistics (``ppo_targets``)."""
        return dict(self.last_metrics)


@register_algorithm("ppo")
def make_ppo(cfg, **kwargs) -> PPO:
    return PPO(cfg, **kwargs)
