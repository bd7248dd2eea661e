"""One GRPO step: posttrain's RLVR stage vs TRL 1.16's ``GRPOTrainer``, side by side in one
process, contenders alternating round by round so machine drift hits both alike.

    flock /tmp/posttrain-heavy.lock env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_grpo.py \
        --threads 1 --rounds 3 --steps 6 --with-generate

Run it on a quiet machine (the load average is printed per round), or read the CPU-time
ratio. ``--with-generate`` adds posttrain with its hf engine on transformers' ``generate``
(``posttrain_gen``), to see what the lean sampling loop gives. Same for all:

- model: a fresh tiny OLMo-2 (``init_tiny_model``, seed 0, ~3.4M parameters, fp32, no
  dropout): it almost never samples EOS, so responses run the full ``--max-new-tokens``
  in both and the work is equal (the generated token counts are printed);
- prompts: the first ``--prompts`` questions of ``data/tiny/rlvr_train.jsonl`` in OLMo 2's
  chat template, every step (the data set holds exactly those prompts); ``--n`` samples
  each at temperature 1, top-p 1, no top-k;
- transformers models sampling in the training process, fp32 (``bf16=False``), no
  gradient checkpointing: posttrain ``engine: hf`` (sharing the trained model; its lean
  sampling loop over the model's forward and KV cache, ``posttrain/rollout/kv_sampling.py``),
  TRL ``use_vllm=False`` (transformers ``generate``);
- reward: the ``gsm8k`` verifier (TRL through ``posttrain.verifiers.trl_rewards``;
  posttrain through its verifier pool, 1 worker);
- GRPO: one optimizer step per generation (TRL ``steps_per_generation`` 1,
  ``num_iterations`` 1; posttrain one pass, one minibatch), all samples in one
  micro-batch, advantages scaled by the group std, token-mean loss (TRL ``dapo``),
  clip 0.2, AdamW at a constant lr 1e-5 (no warmup), gradient clipping at 1.0, ``--beta``
  (TRL's default 0: no reference model; 0.01 with k3 is OLMo 2's setting).

Per step: seconds between consecutive step ends (posttrain: its metrics.jsonl, one line
per step; TRL: a ``TrainerCallback``), after ``--warmup`` steps, median over every
measured step of every round; generated tokens/s = the step's generated tokens over that.
Also the CPU seconds between consecutive step ends (posttrain: after its update; TRL: its
``on_step_end``) of the process and its children (posttrain's verifier workers): with
one thread that is the step's work, and unlike wall time it barely moves when other jobs
share the machine, so on a loaded machine the CPU-time ratio is the one to read.
Then where a posttrain step's time goes: generation, scoring (waiting for the verifier
workers), reference log-probs, the rest of producing the batch, and the update split into
the training forward (log-probs and entropy at response positions), backward and the
optimizer step (an instrumented run of the same step built by the stage's own
``build_run``). TRL's generation time is its ``_generate_single_turn``, timed by wrapping
it on the trainer instance.

What posttrain does not do that TRL does, and why it is not needed: with one optimizer
step per generation batch neither computes old log-probs in a separate pass (the ratio's
denominator is the training forward's own value, detached). Each prompt's tokens go
through the model once per group, not once per sample: in generation (one prefill, its
KV cache copied to the group's rows) and in the training forward (``share_prompts``);
the samples are the same (the same warpers, softmax and ``multinomial`` as ``generate``,
tested). Nothing else is skipped: both compute entropies, the KL (with ``--beta``),
rewards, advantages and metrics.
"""

from __future__ import annotations

import argparse
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
LR = 1e-5


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process (``process_time``: ns resolution) and
    its live children (posttrain's verifier workers; psutil, in clock ticks): unlike wall
    time, barely moved by other jobs on a shared machine."""
    import psutil

    total = time.process_time()
    for child in psutil.Process().children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:  # ended meanwhile
            pass
    return total


def load_rows(count: int) -> list[dict]:
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines()[:count]]
    return [{"messages": r["messages"], "dataset": r["dataset"], "ground_truth": r["ground_truth"]} for r in rows]


# ---------------------------------------------------------------------------- posttrain
def posttrain_stage_config(args, prompts_file: Path) -> dict:
    return {"train_data": [{"path": str(prompts_file)}], "max_steps": args.warmup + args.steps,
            "prompts_per_step": args.prompts, "samples_per_prompt": args.n, "max_new_tokens": args.max_new_tokens,
            "max_length": 512, "temperature": 1.0, "learning_rate": LR, "lr_scheduler": "constant",
            "warmup_ratio": 0.0, "max_grad_norm": 1.0, "beta": args.beta, "kl_estimator": "k3",
            "per_device_batch_size": args.prompts * args.n, "generation_batch_size": args.prompts * args.n,
            "loss_aggregation": "token_mean", "scale_rewards": "group", "clip_low": 0.2, "clip_high": 0.2,
            "verifier_workers": 1, "logging_steps": 1}


def posttrain_ctx(model_dir: Path, work: Path, stage: dict):
    from posttrain.metrics import MetricsWriter
    from posttrain.recipe.load import validate_recipe
    from posttrain.stages.context import StageContext

    recipe = validate_recipe({"output_dir": str(work), "seed": 0, "model": {"name_or_path": str(model_dir),
                                                                             "dtype": "float32"},
                              "stages": {"rlvr": stage}})
    return StageContext(name="rlvr", config=recipe.stages["rlvr"], recipe=recipe, input_model=str(model_dir),
                        input_revision=None, stage_dir=work / "rlvr",
                        metrics=MetricsWriter(work / "rlvr" / "metrics.jsonl"))


def run_posttrain(model_dir: Path, prompts_file: Path, args, work: Path, *, lean: bool = True) -> dict:
    """``lean=False``: the hf engine samples with transformers' ``generate`` instead of its
    lean loop (``--with-generate``)."""
    from posttrain.metrics import read_metrics
    from posttrain.stages.rlvr.runner import build_run

    ctx = posttrain_ctx(model_dir, work, posttrain_stage_config(args, prompts_file))
    run = build_run(ctx)
    run.engine.lean = run.engine.lean and lean
    cpu: list[float] = []
    after_update = run.trainer.after_update

    def timed_after_update(event):  # one update per step: its end is the step's
        cpu.append(cpu_seconds())
        return after_update(event)

    run.trainer.after_update = timed_after_update
    try:
        run.trainer.train()
    finally:
        run.close()
        ctx.metrics.close()
    rows = [r for r in read_metrics(ctx.stage_dir / "metrics.jsonl") if "policy/loss" in r]
    ends = [r["time"] for r in rows]
    measured = rows[args.warmup:]
    seconds = [b - a for a, b in zip(ends[args.warmup - 1 :], ends[args.warmup:])]
    rest = [s - r["time/produce_s"] - r["time/update_s"] for s, r in zip(seconds, measured)]
    return {"seconds": seconds, "cpu": [b - a for a, b in zip(cpu[args.warmup - 1 :], cpu[args.warmup:])],
            "tokens": [r["rollout/tokens"] for r in measured], "rest": rest,
            "parts": {k: statistics.median(r[k] for r in measured) for k in
                      ("time/generate_s", "time/score_wait_s", "time/reference_s", "time/old_logprobs_s",
                       "time/produce_s", "time/update_s")}}


def posttrain_update_split(model_dir: Path, prompts_file: Path, args, work: Path, steps: int) -> dict:
    """The update of a posttrain step split into forward / backward / NaN-Inf check /
    optimizer step, on the stage's own objects (``build_run``), timed piece by piece in
    this process's CPU time (one thread: the work itself, whatever else runs)."""
    from posttrain.stages.rlvr.runner import build_run
    from posttrain.training.engine import set_seed

    ctx = posttrain_ctx(model_dir, work, posttrain_stage_config(args, prompts_file))
    run = build_run(ctx)
    from posttrain.training.guards import nonfinite_flag

    keys = ("collate_s", "forward_s", "backward_s", "guard_s", "optimizer_s")
    parts: dict[str, list[float]] = {k: [] for k in keys}
    try:
        set_seed(0)
        trainer, engine = run.trainer, run.trainer.engine
        tm, spec = engine.models["policy"], trainer.specs["policy"]
        for step in range(args.warmup + steps):
            modules = trainer.modules
            for m in modules.values():
                m.eval()
            with torch.no_grad():
                batch = run.source.produce(step, modules)
            t0 = time.process_time()
            micro = engine.to_device(trainer.collate(list(batch.samples)))
            t1 = time.process_time()
            tm.module.train()
            out = spec.loss_fn(tm.module, micro)
            t2 = time.process_time()
            (out.loss_sum / max(int(out.n_items), 1)).backward()
            t3 = time.process_time()
            nonfinite_flag(out.loss_sum, tm.params)  # the engine's NaN/Inf check of every step
            t4 = time.process_time()
            engine.apply_gradients("policy")
            t5 = time.process_time()
            if step >= args.warmup:
                for k, v in zip(keys, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                    parts[k].append(v)
    finally:
        run.close()
        ctx.metrics.close()
    return {k: statistics.median(v) for k, v in parts.items()}


def generation_floor(model_dir: Path, rows: list[dict], args, repeats: int = 5) -> tuple[float, float]:
    """``(floor, lean)``: CPU seconds of the model forwards alone that any sampler built on transformers'
    forward must run for one step's rollouts, with nothing else: one prefill of the
    prompts (batched, left-padded, the KV cache kept), then ``max_new_tokens - 1`` decode
    forwards of all ``prompts x n`` rows, one token each, through the cache; no sampling,
    no warpers, no stop checks. And the same step's rollouts by the hf engine's lean loop
    (``sample_with_cache``, temperature 1, full length: no stop tokens). Medians of
    ``repeats`` (after one unmeasured), one thread's CPU time. ``lean - floor`` is what
    sampling itself costs; ``floor`` bounds how fast a step with this engine kind can get."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    from posttrain.data.chat import prompt_ids
    from posttrain.logprobs import pad_sequences
    from posttrain.policy import prepare_tokenizer
    from posttrain.rollout.base import SamplingConfig
    from posttrain.rollout.kv_sampling import sample_with_cache

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prepare_tokenizer(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = [prompt_ids(tokenizer, r["messages"]) for r in rows]
    ids, mask = pad_sequences(prompts, tokenizer.pad_token_id, "left")
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    expand = torch.arange(len(rows)).repeat_interleave(args.n)
    token = torch.full((len(expand), 1), tokenizer.pad_token_id + 1)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)
    times, lean = [], []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            t = time.process_time()
            sample_with_cache(model, prompts, [args.n] * len(prompts), sampling, tokenizer.pad_token_id)
            lean.append(time.process_time() - t)
            t = time.process_time()
            cache = DynamicCache(config=model.config)
            model(input_ids=ids, attention_mask=mask, position_ids=position, past_key_values=cache, use_cache=True,
                  logits_to_keep=1)
            cache.reorder_cache(expand)
            full_mask = torch.cat([mask[expand], mask.new_ones(len(expand), args.max_new_tokens)], dim=1)
            for step in range(args.max_new_tokens - 1):
                model(input_ids=token, attention_mask=full_mask[:, : ids.shape[1] + step + 1],
                      position_ids=position[expand, -1:] + 1 + step, past_key_values=cache, use_cache=True)
            times.append(time.process_time() - t)
    return statistics.median(times[1:]), statistics.median(lean[1:])


# ---------------------------------------------------------------------------- TRL
def run_trl(model_dir: Path, rows: list[dict], args, work: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.policy import prepare_tokenizer
    from posttrain.verifiers.trl_rewards import verifier_reward

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prepare_tokenizer(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = GRPOConfig(
        output_dir=str(work / "trl"), use_vllm=False, bf16=False, fp16=False, gradient_checkpointing=False,
        use_cpu=True, num_generations=args.n, per_device_train_batch_size=args.prompts * args.n,
        gradient_accumulation_steps=1, max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0,
        top_k=0, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        weight_decay=0.0, beta=args.beta, epsilon=0.2, loss_type="dapo", scale_rewards="group",
        max_steps=args.warmup + args.steps, logging_steps=1, save_strategy="no", report_to=[],
        disable_tqdm=True, seed=0, dataloader_num_workers=0, log_completions=False,
    )
    data = Dataset.from_list([{"prompt": r["messages"], "dataset": r["dataset"], "ground_truth": r["ground_truth"]}
                              for r in rows])
    trainer = GRPOTrainer(model=model, reward_funcs=[verifier_reward()], args=cfg, train_dataset=data,
                          processing_class=tokenizer)
    ends, cpu, gen_s, tokens = [], [], [], []
    generate = trainer._generate_single_turn

    def timed_generate(*a, **kw):
        t = time.perf_counter()
        out = generate(*a, **kw)
        gen_s.append(time.perf_counter() - t)
        tokens.append(sum(len(c) for c in out[0]))
        return out

    trainer._generate_single_turn = timed_generate

    class StepEnds(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())
            cpu.append(cpu_seconds())

    trainer.add_callback(StepEnds())
    trainer.train()
    seconds = [b - a for a, b in zip(ends[args.warmup - 1 :], ends[args.warmup:])]
    return {"seconds": seconds, "cpu": [b - a for a, b in zip(cpu[args.warmup - 1 :], cpu[args.warmup:])],
            "tokens": tokens[args.warmup:], "parts": {"generate_s": statistics.median(
        gen_s[args.warmup:])}}


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=2, help="prompts per step (default: %(default)s)")
    p.add_argument("--n", type=int, default=8, help="samples per prompt (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="response length (default: %(default)s)")
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient, both (default: %(default)s, TRL's)")
    p.add_argument("--steps", type=int, default=10, help="measured steps per round (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured first steps (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="A/B rounds (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--with-generate", action="store_true",
                   help="also run posttrain with its hf engine on transformers' generate (posttrain_gen)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the first step's end is the first timestamp)")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.disable(logging.WARNING)
    from posttrain.models import init_tiny_model

    load = lambda: " ".join(f"{x:.2f}" for x in os.getloadavg())  # noqa: E731
    print(f"load average at start: {load()}", flush=True)
    names = ("posttrain", "trl") + (("posttrain_gen",) if args.with_generate else ())
    results: dict[str, dict] = {n: {"seconds": [], "cpu": [], "tokens": [], "rest": []} for n in names}
    parts: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="bench_grpo_") as tmp:
        tmp = Path(tmp)
        model_dir = init_tiny_model(tmp / "model", seed=0)
        rows = load_rows(args.prompts)
        prompts_file = tmp / "prompts.jsonl"
        prompts_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[: rnd % len(names)]  # each goes first in turn
            for name in order:
                work = tmp / f"{name}{rnd}"
                r = (run_trl(model_dir, rows, args, work) if name == "trl"
                     else run_posttrain(model_dir, prompts_file, args, work, lean=name == "posttrain"))
                results[name]["seconds"] += r["seconds"]
                results[name]["cpu"] += r["cpu"]
                results[name]["rest"] += r.get("rest", [])
                results[name]["tokens"] += r["tokens"]
                parts[name].append(r["parts"])
                print(f"round {rnd + 1} {name:9s}: {statistics.median(r['seconds']):.3f} s/step "
                      f"({statistics.median(r['cpu']):.3f} CPU s/step), "
                      f"{statistics.median(r['tokens']):.0f} generated tokens/step  (load {load()})", flush=True)
        split = posttrain_update_split(model_dir, prompts_file, args, tmp / "split", steps=args.steps)
        floor, lean_gen = generation_floor(model_dir, rows, args)
    print(f"load average at end: {load()}\n")
    summary = {}
    for name, r in results.items():
        s, tok = statistics.median(r["seconds"]), statistics.median(r["tokens"])
        summary[name] = {"s_per_step": s, "steps_per_s": 1 / s, "cpu_s_per_step": statistics.median(r["cpu"]),
                         "generated_tokens_per_step": tok, "generated_tokens_per_s": tok / s}
    ratio = summary["trl"]["s_per_step"] / summary["posttrain"]["s_per_step"]
    cpu_ratio = summary["trl"]["cpu_s_per_step"] / summary["posttrain"]["cpu_s_per_step"]
    print(f"{args.prompts} prompts x {args.n} samples x {args.max_new_tokens} new tokens, beta {args.beta}, "
          f"{args.threads} threads; medians of {args.steps} steps x {args.rounds} rounds")
    print(f"{'':13s} {'s/step':>8s} {'steps/s':>8s} {'gen tok/s':>10s} {'CPU s/step':>11s}")
    for name, v in summary.items():
        print(f"{name:13s} {v['s_per_step']:8.3f} {v['steps_per_s']:8.2f} {v['generated_tokens_per_s']:10.0f} "
              f"{v['cpu_s_per_step']:11.3f}")
    print(f"posttrain step rate = {ratio:.2f}x TRL's (wall time); {cpu_ratio:.2f}x in CPU time per step")
    if args.with_generate:
        g = summary["posttrain_gen"]
        print(f"posttrain with generate(): {summary['trl']['s_per_step'] / g['s_per_step']:.2f}x TRL's (wall), "
              f"{summary['trl']['cpu_s_per_step'] / g['cpu_s_per_step']:.2f}x (CPU); the lean loop's step "
              f"{g['s_per_step'] / summary['posttrain']['s_per_step']:.2f}x faster (wall), "
              f"{g['cpu_s_per_step'] / summary['posttrain']['cpu_s_per_step']:.2f}x (CPU)")
    pt = {k.removeprefix("time/"): statistics.median(d[k] for d in parts["posttrain"]) for k in parts["posttrain"][0]}
    trl_gen = statistics.median(d["generate_s"] for d in parts["trl"])
    other = pt["produce_s"] - pt["generate_s"] - pt["score_wait_s"] - pt["reference_s"] - pt["old_logprobs_s"]
    print("\nwhere a posttrain step goes (medians, s):")
    for k in ("generate_s", "score_wait_s", "reference_s", "old_logprobs_s"):
        print(f"  {k:22s} {pt[k]:.4f}")
    print(f"  {'other produce':22s} {other:.4f}  (prompts, scoring submit, rewards, advantages, samples)")
    print(f"  {'update_s':22s} {pt['update_s']:.4f}  of which, instrumented (CPU s): collate "
          f"{split['collate_s']:.4f}, forward (log-probs + entropy) {split['forward_s']:.4f}, backward "
          f"{split['backward_s']:.4f}, NaN/Inf check {split['guard_s']:.4f}, clipping + optimizer "
          f"{split['optimizer_s']:.4f}")
    rest = statistics.median(results["posttrain"]["rest"])
    print(f"  {'rest of the step':22s} {rest:.4f}  (weight sync: none, the hf engine samples from the trained "
          "model; metrics, logging)")
    print(f"TRL generation (its _generate_single_turn): {trl_gen:.4f} s/step")
    if args.with_generate:
        gen = statistics.median(d["time/generate_s"] for d in parts["posttrain_gen"])
        print(f"posttrain generation with generate(): {gen:.4f} s/step")
    # The bound: a posttrain step whose generation cost only the model forwards it needs.
    best = summary["posttrain"]["cpu_s_per_step"] - (lean_gen - floor)
    print(f"\ngeneration floor (transformers' forward alone: 1 prefill + {args.max_new_tokens - 1} decode "
          f"forwards of {args.prompts * args.n} rows, no sampling): {floor:.4f} CPU s; the hf engine's lean "
          f"loop for the same rollouts: {lean_gen:.4f} CPU s ({lean_gen / floor:.2f}x the floor)")
    print(f"a posttrain step with generation at that floor: {best:.4f} CPU s = at most "
          f"{summary['trl']['cpu_s_per_step'] / best:.2f}x TRL's step rate with this engine kind")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "summary": summary, "ratio": ratio,
                                               "cpu_ratio": cpu_ratio,
                                               "posttrain_parts": pt, "posttrain_update_split": split,
                                               "trl_generate_s": trl_gen, "generation_floor_cpu_s": floor,
                                               "lean_generation_cpu_s": lean_gen,
                                               "best_cpu_s_per_step": best}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
