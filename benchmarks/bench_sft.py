"""SFT training speed: posttrain's loop vs TRL's ``SFTTrainer`` vs a bare PyTorch loop,
side by side in one process, alternating the contenders round by round so machine drift
hits all alike.

    python benchmarks/bench_sft.py --threads 2 --steps 60 --rounds 3

Run it on a quiet machine (it prints the load average at start, per round and at the
end; the ratios are only as good as the quiet). Same tiny OLMo-2 (``init_tiny_model``
default, ~3.4M parameters), same tokenized tiny-task conversations (``data/tiny``,
assistant-only labels, truncated to ``--max-length``), 16 conversations per step, one
pass over the same ``steps * 16`` examples, lr, fp32 on CPU, AdamW, clipping at 1.0, no
gradient checkpointing. Contenders:

- ``trl`` / ``trl_compile``: TRL's ``SFTTrainer`` (padded batches) without / with
  ``torch_compile=True``;
- ``bare``: forward, cross-entropy, backward, clip, fused AdamW, nothing else;
- ``posttrain``: the Trainer with padded batches and full logits (the pre-speed-work path);
- ``posttrain_fast``: packing + LM head at label positions only (what ``packing: true``
  gives), eager; ``posttrain_compile``: the same with ``compile: true``.

Each rate is real (non-pad) tokens per second over steps ``warmup+1..steps`` (compilation
and warm-up left out, and reported separately as "first steps +s": the seconds the first
steps took beyond the steady pace), median over rounds; "x trl" divides by ``trl``;
"% peak" is model FLOP/s = 6 x params x tokens/s over the fp32 matmul peak of these cores
(a 1536^3 ``torch.mm``, measured in every round, median).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "tiny" / "sft_train.jsonl"


def matmul_peak(n: int = 1536, reps: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def load_examples(model_dir: Path, n: int, max_length: int) -> list[dict]:
    from posttrain.data.sft import build_sft_examples
    from posttrain.policy import Policy
    from posttrain.recipe.schema import DataSource

    tok = Policy.load(model_dir, device="cpu").tokenizer
    examples, _ = build_sft_examples([DataSource(path=str(DATA), amount=n)], tok, max_length, "truncate", seed=0,
                                     cache_dir=model_dir.parent / "cache")
    return examples[:n]


def _steady(step_times: list[float], step_tokens: list[int], warmup: int) -> tuple[float, float]:
    """``(tokens/s after the first `warmup` steps, seconds those first steps took beyond
    the steady pace)``: the second is the compile / warm-up cost."""
    rate = sum(step_tokens[warmup:]) / sum(step_times[warmup:])
    return rate, max(sum(step_times[:warmup]) - sum(step_tokens[:warmup]) / rate, 0.0)


def run_posttrain(model_dir: Path, examples: list[dict], args, work: Path, *, fast: bool = False,
                  compile: bool = False) -> tuple[float, float]:
    """posttrain's Trainer with the SFT stage's own batching and loss. ``fast``: packing
    (rows of max_length, positions restart per conversation) + the LM head at label
    positions only; ``compile``: ``compile: true``."""
    from posttrain.metrics import MetricsWriter, read_metrics
    from posttrain.policy import Policy
    from posttrain.recipe.load import validate_recipe
    from posttrain.stages.context import StageContext
    from posttrain.stages.sft import count_label_tokens, make_batching, sft_loss_fn
    from posttrain.training import Trainer
    from posttrain.training.batching import chunked_plan, pad_collate, packed_plan

    stage = {"train_data": [{"path": "unused/bench"}], "learning_rate": args.lr, "per_device_batch_size": args.batch,
             "num_epochs": 1, "logging_steps": 1, "warmup_ratio": 0.0, "max_grad_norm": 1.0,
             "max_length": args.max_length, "packing": fast, "compile": compile}
    recipe = validate_recipe({"output_dir": str(work), "stages": {"sft": stage}})
    metrics = MetricsWriter(work / "sft" / "metrics.jsonl")
    ctx = StageContext(name="sft", config=recipe.stages["sft"], recipe=recipe, input_model=str(model_dir),
                       input_revision=None, stage_dir=work / "sft", metrics=metrics)
    policy = Policy.load(model_dir, device="cpu")
    pad = policy.tokenizer.pad_token_id
    if fast:  # the stage's collate; the plan in file order (as every contender) instead of shuffled
        collate, _ = make_batching(ctx.config, examples, pad, 0)
        plan = packed_plan([len(e["input_ids"]) for e in examples], args.batch, args.max_length, 0, shuffle=False)
    else:  # the stage's batching before this work: padded rows, full logits
        collate, plan = partial(pad_collate, pad_id=pad), chunked_plan(len(examples), args.batch, 0, shuffle=False)
    Trainer(ctx, policy, examples, collate, sft_loss_fn, progress=False, count_items=count_label_tokens,
            batch_plan=plan).train()
    metrics.close()
    rows = [r for r in read_metrics(work / "sft" / "metrics.jsonl") if "tokens_per_s" in r]
    step_tokens = [b - a for a, b in zip([0] + [r["tokens"] for r in rows], [r["tokens"] for r in rows])]
    return _steady([n / r["tokens_per_s"] for n, r in zip(step_tokens, rows)], step_tokens, args.warmup)


def run_trl(model_dir: Path, examples: list[dict], args, work: Path, *, compile: bool = False) -> tuple[float, float]:
    """TRL's SFTTrainer on the same pre-tokenized rows (padded batches; this data is ~0.4%
    padding, so ``padding_free`` / packing would save nothing, and TRL documents
    ``padding_free`` for FlashAttention only). ``compile``: ``torch_compile=True``."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    ds = Dataset.from_list([{"input_ids": e["input_ids"], "assistant_masks": [int(x != -100) for x in e["labels"]]}
                            for e in examples])
    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args_, state, *a, **k):
            marks.append((time.perf_counter(), 0))

        def on_step_end(self, args_, state, *a, **k):
            marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    cfg = SFTConfig(output_dir=str(work), per_device_train_batch_size=args.batch, num_train_epochs=1,
                    learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
                    bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                    save_strategy="no", logging_steps=args.steps, max_length=args.max_length, packing=False,
                    dataloader_num_workers=0, disable_tqdm=True, seed=0, data_seed=0, assistant_only_loss=False,
                    include_num_input_tokens_seen="non_padding", torch_compile=compile)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    trainer.train()
    times = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    return _steady(times, [b[1] - a[1] for a, b in zip(marks, marks[1:])], args.warmup)


def run_bare(model_dir: Path, examples: list[dict], args, work: Path) -> tuple[float, float]:
    """The floor of eager PyTorch: forward, cross-entropy, backward, clip, fused AdamW."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from posttrain.training.batching import pad_collate

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, fused=True)
    batches = [pad_collate(examples[i : i + args.batch], pad_id=1) for i in range(0, len(examples), args.batch)]
    times = []
    for b in batches:
        t = time.perf_counter()
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return _steady(times, [b["n_tokens"] for b in batches], args.warmup)


RUNNERS = {
    "trl": run_trl,
    "trl_compile": partial(run_trl, compile=True),
    "bare": run_bare,
    "posttrain": run_posttrain,
    "posttrain_fast": partial(run_posttrain, fast=True),
    "posttrain_compile": partial(run_posttrain, fast=True, compile=True),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=5, help="first steps of each run left out of its rate")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--only", default=",".join(RUNNERS), help=f"comma-separated, from {', '.join(RUNNERS)}")
    args = p.parse_args(argv)
    if args.steps <= args.warmup:
        p.error("--steps must exceed --warmup")
    torch.set_num_threads(args.threads)
    import logging
    import os

    logging.disable(logging.WARNING)
    from posttrain.models import init_tiny_model

    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(RUNNERS)
    if unknown:
        p.error(f"unknown contender(s) {', '.join(sorted(unknown))}; choose from {', '.join(RUNNERS)}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = init_tiny_model(tmp / "model", seed=0)
        from transformers import AutoModelForCausalLM

        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
        examples = load_examples(model_dir, args.steps * args.batch, args.max_length)
        pad_frac = 1 - sum(len(e["input_ids"]) for e in examples) / (len(examples) * args.max_length)
        print(f"model {n_params:,} params, {len(examples)} examples, batch {args.batch}, max_length "
              f"{args.max_length} (~{pad_frac:.1%} padding), {args.threads} threads, {args.rounds} rounds, "
              f"rates over steps {args.warmup + 1}-{args.steps}")
        # warm-up (oneDNN primitive caches, allocator), so no contender pays it in round 0
        run_bare(model_dir, examples[: (args.warmup + 1) * args.batch], args, tmp / "warmup")
        rates: dict[str, list[float]] = {n: [] for n in names}
        overhead: dict[str, list[float]] = {n: [] for n in names}
        peaks = []
        for r in range(args.rounds):
            peaks.append(matmul_peak())
            for name in names:
                rate, extra = RUNNERS[name](model_dir, examples, args, tmp / f"{name}{r}")
                rates[name].append(rate)
                overhead[name].append(extra)
            print(f"round {r}: " + "  ".join(f"{n} {rates[n][-1]:,.0f}" for n in names) + f"  peak {peaks[-1]:.1f} GFLOP/s"
                  f"  (load {os.getloadavg()[0]:.2f})", flush=True)
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    peak = statistics.median(peaks)
    med = {n: statistics.median(v) for n, v in rates.items()}
    print(f"\nfp32 matmul peak: {peak:.1f} GFLOP/s (median of {len(peaks)}: {', '.join(f'{x:.1f}' for x in peaks)})")
    print(f"{'contender':>18} {'tokens/s':>9} {'x trl':>6} {'GFLOP/s':>8} {'% peak':>7} {'first steps +s':>15}")
    for n in names:
        gflops = 6 * n_params * med[n] / 1e9
        ratio = f"{med[n] / med['trl']:.2f}" if "trl" in med else "-"
        print(f"{n:>18} {med[n]:>9,.0f} {ratio:>6} {gflops:>8.1f} {gflops / peak:>7.1%} "
              f"{statistics.median(overhead[n]):>15.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
