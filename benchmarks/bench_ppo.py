"""One PPO step vs one GRPO step on the same rollout batch, side by side in one process, and
the value model's forward/backward cost vs the policy's. TRL 1.16 ships no PPO trainer to
compare against, so the peers are posttrain's own GRPO step and the policy.

    flock /tmp/posttrain-heavy.lock .venv/bin/python benchmarks/bench_ppo.py --threads 2 --rounds 3

Setup (the same for both algorithms): a fresh tiny OLMo-2 (``init_tiny_model``, seed 0,
fp32; it almost never samples EOS, so every response runs ``--max-new-tokens``), the
first ``--prompts`` prompts of ``data/tiny/rlvr_train.jsonl`` x ``--n`` samples, the
``hf`` engine, ``beta`` 0.05 (a frozen reference), ``--epochs`` optimizer passes x
``--minibatches`` minibatches per rollout batch, micro-batches of ``--micro`` responses.
Each algorithm's stage is built by the stage's own ``build_run`` (``algorithm: grpo`` /
``ppo``; PPO's value model starts from the policy's weights with a new head).

**Step on the same rollout batch.** One batch is sampled and scored once. Then each
timed step is what the stage does with a batch after scoring, on that batch: the
reference log-probs, the policy's old log-probs where the step needs them, the
algorithm's fields (GRPO: group advantages; PPO: the value model's values, per-token
rewards with the KL, GAE, whitening) and every optimizer update of the step (PPO: the
policy's, then the value model's), through the online trainer's own step. Rounds
alternate the order. Generation and scoring of the batch, timed once, are the part the
two share; the full-step ratio adds it to both.

**Value model vs policy.** On one micro-batch of that batch: the forward (policy:
log-probs and entropies of the response tokens through the LM head; value model: the
scalar head at the same positions) and the backward of each model's loss, timed
separately, medians over ``--repeats``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "data" / "tiny" / "rlvr_train.jsonl"


def stage_config(args, prompts_file: Path, algorithm: str) -> dict:
    return {"train_data": [{"path": str(prompts_file)}], "algorithm": algorithm, "max_steps": 1000,
            "prompts_per_step": args.prompts, "samples_per_prompt": args.n, "max_new_tokens": args.max_new_tokens,
            "max_length": 512, "temperature": 1.0, "learning_rate": 1e-5, "lr_scheduler": "constant",
            "beta": 0.05, "kl_estimator": "k1", "num_iterations": args.epochs, "num_minibatches": args.minibatches,
            "per_device_batch_size": args.micro, "generation_batch_size": args.prompts * args.n,
            "verifier_workers": 1, "logging_steps": 1}


def build(model_dir: Path, work: Path, stage: dict):
    from posttrain.metrics import MetricsWriter
    from posttrain.recipe.load import validate_recipe
    from posttrain.stages.context import StageContext
    from posttrain.stages.rlvr.runner import build_run

    recipe = validate_recipe({"output_dir": str(work), "seed": 0,
                              "model": {"name_or_path": str(model_dir), "dtype": "float32"},
                              "stages": {"rlvr": stage}})
    ctx = StageContext(name="rlvr", config=recipe.stages["rlvr"], recipe=recipe, input_model=str(model_dir),
                       input_revision=None, stage_dir=work / "rlvr",
                       metrics=MetricsWriter(work / "rlvr" / "metrics.jsonl"))
    return build_run(ctx), ctx


class FixedBatch:
    """A rollout source that hands the trainer the same scored rollouts every step and does
    everything the stage's source does after scoring (reference and old log-probs, the
    algorithm's fields, samples)."""

    def __init__(self, rollouts, source, algorithm, mask_truncated: bool):
        self.rollouts, self.source, self.algorithm = rollouts, source, algorithm
        self.mask_truncated = mask_truncated

    def produce(self, step, models):
        from posttrain.stages.rlvr.rollouts import to_samples
        from posttrain.training import OnlineBatch

        r = copy.copy(self.rollouts)
        r.ref_logprobs = r.old_logprobs = None
        prompts, responses = r.prompt_ids, r.response_ids
        if self.source.reference is not None:
            r.ref_logprobs = self.source.reference(models, prompts, responses)
        if self.source.old_logprobs is not None:
            r.old_logprobs = self.source.old_logprobs(models, prompts, responses)
        fields = self.algorithm.sample_fields(r, models)
        return OnlineBatch(to_samples(r, fields, mask_truncated=self.mask_truncated), {})


def sample_batch(run) -> tuple:
    """One scored rollout batch from the run's own source, and the seconds it took."""
    captured = {}
    algorithm = run.source.algorithm
    original = algorithm.sample_fields

    def capture(rollouts, models):
        captured["rollouts"] = copy.copy(rollouts)
        return original(rollouts, models)

    algorithm.sample_fields = capture
    modules = run.trainer.modules
    t = time.perf_counter()
    with torch.no_grad():
        batch = run.source.produce(0, modules)
    algorithm.sample_fields = original
    m = batch.metrics
    return captured["rollouts"], m["time/generate_s"] + m["time/score_wait_s"], time.perf_counter() - t


def time_steps(run, rollouts, steps: int) -> list[float]:
    from posttrain.training.online import _Window

    trainer = run.trainer
    trainer.source = FixedBatch(rollouts, run.source, run.source.algorithm, trainer.cfg.mask_truncated)
    out = []
    for _ in range(steps):
        t = time.perf_counter()
        trainer._train_step(_Window(trainer.specs))
        out.append(time.perf_counter() - t)
        trainer.step += 1
    return out


def fwd_bwd(run, rollouts, repeats: int) -> dict[str, dict[str, float]]:
    """Forward and backward seconds of the policy's and the value model's losses on one
    micro-batch (PPO's run)."""
    trainer = run.trainer
    src = FixedBatch(rollouts, run.source, run.source.algorithm, trainer.cfg.mask_truncated)
    with torch.no_grad():
        samples = src.produce(0, trainer.modules).samples
    micro = trainer.engine.to_device(trainer.collate(list(samples[: trainer.micro_batch_size])))
    out = {}
    for name in ("policy", "value"):
        tm, spec = trainer.engine.models[name], trainer.specs[name]
        tm.module.train()
        fwd, bwd = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            loss = spec.loss_fn(tm.module, micro)
            t1 = time.perf_counter()
            (loss.loss_sum / max(int(loss.n_items), 1)).backward()
            t2 = time.perf_counter()
            tm.module.zero_grad(set_to_none=True)
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
        out[name] = {"forward_s": statistics.median(fwd), "backward_s": statistics.median(bwd),
                     "params": sum(p.numel() for p in tm.module.parameters())}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=4, help="prompts per step (default: %(default)s)")
    p.add_argument("--n", type=int, default=8, help="samples per prompt (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="response length (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=1, help="optimizer passes per batch, both (default: %(default)s; "
                                                          "Tülu 3 PPO: 4)")
    p.add_argument("--minibatches", type=int, default=1, help="minibatches per pass (default: %(default)s)")
    p.add_argument("--micro", type=int, default=16, help="responses per micro-batch (default: %(default)s)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="A/B rounds (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=10, help="forward/backward repeats (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.disable(logging.WARNING)
    from posttrain.models import init_tiny_model

    load = lambda: " ".join(f"{x:.2f}" for x in os.getloadavg())  # noqa: E731
    print(f"load average at start: {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_ppo_") as tmp:
        tmp = Path(tmp)
        model_dir = init_tiny_model(tmp / "model", seed=0)
        rows = [json.loads(line) for line in PROMPTS.read_text().splitlines()[: args.prompts]]
        prompts_file = tmp / "prompts.jsonl"
        prompts_file.write_text("".join(json.dumps({k: r[k] for k in ("messages", "dataset", "ground_truth")}) + "\n"
                                        for r in rows))
        runs = {name: build(model_dir, tmp / name, stage_config(args, prompts_file, name)) for name in ("grpo", "ppo")}
        try:
            rollouts, shared_s, _ = sample_batch(runs["grpo"][0])
            tokens = sum(len(t) for t in rollouts.response_ids)
            seconds: dict[str, list[float]] = {"grpo": [], "ppo": []}
            for rnd in range(args.rounds):
                order = ("grpo", "ppo") if rnd % 2 == 0 else ("ppo", "grpo")
                for name in order:
                    s = time_steps(runs[name][0], rollouts, args.steps)
                    seconds[name] += s[1:] if rnd == 0 else s  # the very first step warms up
                    print(f"round {rnd + 1} {name}: {statistics.median(s):.4f} s/step  (load {load()})", flush=True)
            split = fwd_bwd(runs["ppo"][0], rollouts, args.repeats)
        finally:
            for run, ctx in runs.values():
                run.close()
                ctx.metrics.close()
    print(f"load average at end: {load()}\n")
    med = {k: statistics.median(v) for k, v in seconds.items()}
    print(f"{args.prompts} prompts x {args.n} samples, {tokens} response tokens, {args.epochs} pass(es) x "
          f"{args.minibatches} minibatch(es), micro-batches of {args.micro}, {args.threads} threads; medians of "
          f"{args.steps} steps x {args.rounds} rounds")
    print(f"step on the batch, after scoring:  GRPO {med['grpo']:.4f} s   PPO {med['ppo']:.4f} s   "
          f"PPO/GRPO {med['ppo'] / med['grpo']:.2f}x")
    full = {k: v + shared_s for k, v in med.items()}
    print(f"with the batch's generation + scoring ({shared_s:.4f} s, shared):  GRPO {full['grpo']:.4f} s   "
          f"PPO {full['ppo']:.4f} s   PPO/GRPO {full['ppo'] / full['grpo']:.2f}x")
    pol, val = split["policy"], split["value"]
    print(f"one micro-batch of {args.micro}:  policy forward {pol['forward_s'] * 1e3:.2f} ms, backward "
          f"{pol['backward_s'] * 1e3:.2f} ms;  value model forward {val['forward_s'] * 1e3:.2f} ms, backward "
          f"{val['backward_s'] * 1e3:.2f} ms;  value/policy forward "
          f"{val['forward_s'] / pol['forward_s']:.2f}x, backward {val['backward_s'] / pol['backward_s']:.2f}x "
          f"({val['params']:,} vs {pol['params']:,} parameters)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "step_s": med, "shared_s": shared_s,
                                               "ratio": med["ppo"] / med["grpo"], "fwd_bwd": split}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
