"""A small deterministic online run for the driver's tests: a policy and a value model
(both small real OLMo-2s) trained PPO-style on batches the current policy samples.

Each step's prompts come from ``numpy.random.default_rng([seed, step])``; the responses
are sampled from the current policy with the global torch RNG (so the RNG restore
matters), their old log-probs and a toy reward (the share of response tokens below 256)
computed with it. The policy takes a clipped-ratio loss summed over response tokens
(unclipped with ``--share``, where runs are compared to a tolerance); the
value model (token 0's logit as the value) a squared error to the reward. The source
checks that its own state came back on resume (``produced == step``).

Run as a script (``python online_toy.py RUN POLICY VALUE --steps N ...``) it trains in
a subprocess, appends every ``after_update`` / ``after_resume`` call to ``RUN/hooks.jsonl``,
and with ``--pause-at S`` stops in step S's second pass (after writing ``RUN/paused``)
until it is killed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

PROMPT, RESPONSE = 4, 6


class ToySource:
    def __init__(self, seed: int, n: int = 8, share: tuple[int, int] | None = None):
        self.seed, self.n, self.share = seed, n, share
        self.produced = 0
        self.rewards: list[float] = []

    def produce(self, step, models):
        from posttrain.training import OnlineBatch

        if self.produced != step:
            raise RuntimeError(f"source state not restored: produced {self.produced} batches, asked for step {step}")
        rng = np.random.default_rng([self.seed, step])
        ids = torch.as_tensor(rng.integers(5, 500, size=(self.n, PROMPT)))
        policy = models["policy"]
        if self.share is None:  # sample from the current policy
            for _ in range(RESPONSE):
                probs = torch.softmax(policy(input_ids=ids).logits[:, -1].float(), -1)
                ids = torch.cat([ids, torch.multinomial(probs, 1)], 1)
        else:  # fixed responses, the same in every process (multi-process equality)
            ids = torch.cat([ids, torch.as_tensor(rng.integers(5, 500, size=(self.n, RESPONSE)))], 1)
        old = _response_logprobs(policy, ids)
        # responses "stop" after 2..6 tokens: the rest is masked, so item counts differ
        # between micro-batches and processes
        mask = torch.arange(RESPONSE)[None, :] < torch.as_tensor(rng.integers(2, RESPONSE + 1, size=(self.n, 1)))
        reward = ((ids[:, PROMPT:] < 256) & mask).sum(1) / mask.sum(1)
        adv = reward - reward.mean()
        samples = [{"input_ids": ids[i].tolist(), "old_logprobs": old[i].tolist(), "mask": mask[i].tolist(),
                    "adv": float(adv[i]), "ret": float(reward[i])} for i in range(self.n)]
        if self.share is not None:
            rank, world = self.share
            samples = samples[rank::world]
        self.produced += 1
        self.rewards.append(float(reward.mean()))
        return OnlineBatch(samples, {"reward": float(reward.mean())})

    def state_dict(self):
        return {"produced": self.produced, "rewards": list(self.rewards)}

    def load_state_dict(self, state):
        self.produced, self.rewards = state["produced"], list(state["rewards"])


def _response_logprobs(model, ids):
    logits = model(input_ids=ids).logits[:, PROMPT - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, PROMPT:, None]).squeeze(-1)


def collate(samples):
    return {"input_ids": torch.tensor([s["input_ids"] for s in samples]),
            "old_logprobs": torch.tensor([s["old_logprobs"] for s in samples]),
            "mask": torch.tensor([s["mask"] for s in samples]),
            "adv": torch.tensor([s["adv"] for s in samples]), "ret": torch.tensor([s["ret"] for s in samples]),
            "n_tokens": len(samples) * (PROMPT + RESPONSE)}


def count_response_tokens(batch):
    return int(batch["mask"].sum())


def policy_loss(model, batch, clip: float | None = 0.2):
    """PPO's clipped surrogate per response token (no clipping with ``clip=None``: a
    smooth loss, for comparisons across float summation orders)."""
    from posttrain.training import LossOutput

    logp = _response_logprobs(model, batch["input_ids"])
    ratio = torch.exp(logp - batch["old_logprobs"])
    adv = batch["adv"][:, None]
    per_token = -ratio * adv
    if clip is not None:
        per_token = torch.maximum(per_token, -ratio.clamp(1 - clip, 1 + clip) * adv)
    mask = batch["mask"]
    return LossOutput((per_token * mask).sum(), mask.sum(), {"ratio": (ratio.detach() * mask).sum()})


def value_loss(model, batch):
    from posttrain.training import LossOutput

    values = model(input_ids=batch["input_ids"]).logits[:, PROMPT:, 0].float()
    err = 0.5 * (values - batch["ret"][:, None]) ** 2
    return LossOutput((err * batch["mask"]).sum(), batch["mask"].sum())


def build(ctx, policy_dir, value_dir, *, steps, passes=2, minibatches=2, micro_batch_size=2, policy_lr=1e-3,
          value_lr=1e-2, value_opt=None, after_update=None, after_resume=None, share=None, shuffle=True,
          **policy_opt):
    from transformers import AutoModelForCausalLM

    from posttrain.training import OnlineModel, OnlineTrainer, OptimizerSettings

    policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    value = AutoModelForCausalLM.from_pretrained(value_dir)
    popt = dict(lr_scheduler="linear", warmup_ratio=0.25, max_grad_norm=1.0)
    vopt = dict(lr_scheduler="constant", weight_decay=0.01, max_grad_norm=0.5)
    models = [
        OnlineModel("policy", policy, OptimizerSettings(learning_rate=policy_lr, **{**popt, **policy_opt}),
                    partial(policy_loss, clip=None if share else 0.2), count_items=count_response_tokens),
        # no count_items: the engine rescales the value gradients after the backward passes
        OnlineModel("value", value, OptimizerSettings(learning_rate=value_lr, **{**vopt, **(value_opt or {})}),
                    value_loss),
    ]
    return OnlineTrainer(ctx, models, ToySource(ctx.seed, share=share), collate, steps=steps, passes=passes,
                         minibatches=minibatches, micro_batch_size=micro_batch_size, shuffle=shuffle,
                         after_update=after_update, after_resume=after_resume, progress=False)


def checksum(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("policy", type=Path)
    ap.add_argument("value", type=Path)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--save-steps", type=int, default=2)
    ap.add_argument("--pause-at", type=int)
    ap.add_argument("--share", action="store_true", help="fixed responses, this process's share of them")
    ap.add_argument("--micro-batch-size", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_ctx

    from posttrain.training import get_accelerator

    acc = get_accelerator()
    ctx = make_ctx(args.run, args.policy, save_steps=args.save_steps, logging_steps=1, keep_last=2, seed=5)
    log = args.run / f"hooks_{acc.process_index}.jsonl"
    trainer = None

    def record(kind, **fields):
        with open(log, "a") as f:
            f.write(json.dumps({"kind": kind, **fields}) + "\n")

    def after_update(ev):
        record("update", step=ev.step, pass_index=ev.pass_index, minibatch=ev.minibatch, update=ev.update,
               last=ev.last_in_batch, policy=checksum(trainer.engine.models["policy"].model))
        if args.pause_at is not None and ev.step == args.pause_at and ev.pass_index == 1:
            (args.run / "paused").write_text("")
            while True:  # held here until the test kills the process
                time.sleep(1)

    share = (acc.process_index, acc.num_processes) if args.share else None
    trainer = build(ctx, args.policy, args.value, steps=args.steps, after_update=after_update,
                    after_resume=lambda step: record("resume", step=step), share=share,
                    micro_batch_size=args.micro_batch_size, shuffle=not args.share)
    trainer.train()


if __name__ == "__main__":
    main()
