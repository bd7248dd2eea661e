"""The policy's loss on one micro-batch (``batch.collate_samples``), for the online trainer.

One forward of the policy gives the log-probs of the response tokens only, at the
sampling temperature (``posttrain.logprobs.logprobs_at``), and each position's entropy
(a metric). Then, per token:

- old log-probs: the batch's ``old_logprobs`` when the step makes several updates; with
  one update (one pass, one minibatch) the policy has not moved since sampling, so the
  old log-prob IS this forward's value, detached: the ratio is exactly 1 and its
  gradient is the policy gradient, and no separate pass is spent on it (TRL and
  open-instruct skip it the same way);
- the KL to the reference (``beta > 0``): ``kl_estimate(logprobs, ref_logprobs)`` with
  gradient, added to the loss with weight ``beta``;
- rollout correction: the collate's weights/mask, or, without old log-probs, ``tis``
  from this forward's detached log-probs against the engine's;
- the policy loss of the registry (``clipped``, ``gspo``, ``cispo``), then the
  aggregation as ``(sum, count)``: the trainer divides the minibatch's summed losses by
  its summed counts over micro-batches and processes, so ``token_mean`` spans the whole
  optimizer step.

Metrics (per loss item, logged as ``policy/<name>``): the policy loss's statistics
(``clip_frac_low``/``high``, ``approx_kl``, ``ratio_mean``, ``kl``), ``entropy``, and the
engine/trainer mismatch on the first update of the step (``mismatch/abs_diff_mean``,
``mismatch/k1``, ``mismatch/k3``, ``mismatch/ratio_mean``, ``mismatch/corrected_frac``).
"""

from __future__ import annotations

import torch

from posttrain.logprobs import logprobs_at
from posttrain.losses.kl import kl_estimate
from posttrain.losses.policy import PolicyLossInputs, PolicyLossParams, aggregation_count, policy_loss
from posttrain.rl.correction import rollout_correction
from posttrain.rl.stats import Metrics
from posttrain.training import LossOutput


def response_logprobs_2d(model, batch: dict, temperature: float, entropy: bool = True):
    """``(B, T)`` log-probs (with gradient when enabled) and entropies of the response
    tokens, zero on padding."""
    out = logprobs_at(model, batch["input_ids"], batch["positions"], batch["targets"],
                      attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
                      temperature=temperature, entropy=entropy)
    mask = batch["response_mask"]
    lp = out.logprobs.new_zeros(mask.shape).masked_scatter(mask, out.logprobs.float())
    ent = None
    if out.entropy is not None:
        ent = out.entropy.detach().new_zeros(mask.shape).masked_scatter(mask, out.entropy.detach().float())
    return lp, ent


@torch.no_grad()
def per_sample_outputs(model, prompts, responses, pad_id: int, forward, *, batch_size: int, share: str = "auto",
                       dims: tuple[int, int] | None = None) -> list[torch.Tensor]:
    """No-grad per-token outputs of each response given its prompt, one ``(L,)`` CPU
    float32 tensor per sample: ``forward(model, batch)`` maps one batch of the training
    forward's layout (``batch.sequence_batch``, on the model's device; prompts shared
    where that is cheaper) to the flat ``(N,)`` values at its response positions. The
    model is put in eval mode for the call and restored after."""
    from posttrain.stages.rlvr.batch import sequence_batch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        for start in range(0, len(prompts), batch_size):
            b = sequence_batch(prompts[start : start + batch_size], responses[start : start + batch_size], pad_id,
                               share=share, dims=dims)
            lengths = b.pop("lengths").tolist()
            flat = forward(model, {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()})
            out.extend(flat.float().cpu().split(lengths))
    finally:
        model.train(was_training)
    return out


def sample_logprobs(model, prompts, responses, pad_id: int, *, temperature: float, batch_size: int,
                    share: str = "auto", dims: tuple[int, int] | None = None) -> list[torch.Tensor]:
    """No-grad log-probs of each response given its prompt (reference and old
    log-probs), one ``(L,)`` CPU tensor per sample (``per_sample_outputs``)."""
    def forward(m, b):
        return logprobs_at(m, b["input_ids"], b["positions"], b["targets"], attention_mask=b["attention_mask"],
                           position_ids=b["position_ids"], temperature=temperature).logprobs

    return per_sample_outputs(model, prompts, responses, pad_id, forward, batch_size=batch_size, share=share,
                              dims=dims)


def count_items(aggregation: str):
    """``count_items(cpu_batch)`` for the trainer: the loss's items, before the forward."""
    return lambda batch: aggregation_count(batch["loss_mask"], aggregation)


def make_policy_loss(cfg, *, kl_in_loss: bool = True):
    """``loss_fn(model, batch) -> LossOutput`` for the policy, from an ``RLVRConfig``.
    ``kl_in_loss``: add ``beta x KL`` to the loss (GRPO); PPO puts it in the reward."""
    params = PolicyLossParams(clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip,
                              cispo_max_weight=cfg.cispo_max_weight, kl_coef=cfg.beta if kl_in_loss else 0.0)
    use_kl = kl_in_loss and cfg.beta > 0

    def loss_fn(model, batch: dict) -> LossOutput:
        lp, entropy = response_logprobs_2d(model, batch, cfg.temperature)
        mask = batch["loss_mask"]
        first_update = "old_logprobs" not in batch
        old = lp.detach() if first_update else batch["old_logprobs"]
        weights = batch.get("correction_weights")
        stats = Metrics()
        # The mismatch between the engine's and the trainer's log-probs of the sampled
        # tokens, before any update of this step.
        fix = rollout_correction(old, batch["engine_logprobs"], batch["response_mask"],
                                 cfg.rollout_correction if first_update else "none", cap=cfg.tis_cap)
        stats.update(_means_only(fix.metrics))
        stats.mean("mismatch/abs_diff_mean", (old - batch["engine_logprobs"]).abs(), batch["response_mask"])
        if first_update and cfg.rollout_correction == "tis":
            weights = fix.weights
        kl = None
        if use_kl:
            kl = kl_estimate(lp, batch["ref_logprobs"], cfg.kl_estimator, mask)
        inputs = PolicyLossInputs(logprobs=lp, old_logprobs=old, advantages=batch["advantages"], mask=mask,
                                  weights=weights, kl=kl)
        out = policy_loss(cfg.policy_loss, inputs, params, cfg.loss_aggregation, cfg.max_new_tokens)
        if entropy is not None:
            stats.mean("entropy", entropy, mask)
        stats.update(out.metrics)
        metrics = {k.removeprefix("policy/"): v for k, v in stats.item_sums(out.n_items).items()}
        return LossOutput(out.loss_sum, out.n_items, metrics)

    return loss_fn


def _means_only(m: Metrics) -> Metrics:
    """The means of ``m``: extremes cannot be summed per item into the trainer's metrics."""
    out = Metrics()
    for k, v in m.sums.items():
        out.add(k, v, m.counts[k])
    return out
