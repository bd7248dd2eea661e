"""SFT training speed: posttrain's loop vs TRL's ``SFTTrainer`` vs a bare PyTorch loop,
side by side in one process, alternating A B C A B C so machine drift hits all alike.

Same tiny OLMo-2 (``init_tiny_model`` default, ~3.4M parameters), same tokenized tiny-task
conversations (assistant-only labels, truncated to ``--max-length``), same batch of 16,
one pass over the same ``steps * 16`` examples in file order, fp32 on CPU, AdamW, no
packing, no gradient checkpointing. Reports non-pad tokens/s (median over rounds), the
ratios, the fp32 matmul peak of these cores (a large ``torch.mm``, measured in every round)
and model FLOP/s = 6 x params x tokens/s as a share of that peak.

    python benchmarks/bench_sft.py --threads 2 --steps 30 --rounds 3
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


def run_posttrain(model_dir: Path, examples: list[dict], args, work: Path) -> float:
    from posttrain.metrics import MetricsWriter, read_metrics
    from posttrain.policy import Policy
    from posttrain.recipe.load import validate_recipe
    from posttrain.stages.context import StageContext
    from posttrain.stages.sft import count_label_tokens, sft_loss_fn
    from posttrain.training import Trainer
    from posttrain.training.batching import chunked_plan, pad_collate

    stage = {"train_data": [{"path": "unused/bench"}], "learning_rate": args.lr, "per_device_batch_size": args.batch,
             "num_epochs": 1, "logging_steps": args.steps, "warmup_ratio": 0.0, "max_grad_norm": 1.0}
    recipe = validate_recipe({"output_dir": str(work), "stages": {"sft": stage}})
    metrics = MetricsWriter(work / "sft" / "metrics.jsonl")
    ctx = StageContext(name="sft", config=recipe.stages["sft"], recipe=recipe, input_model=str(model_dir),
                       input_revision=None, stage_dir=work / "sft", metrics=metrics)
    policy = Policy.load(model_dir, device="cpu")
    pad = policy.tokenizer.pad_token_id
    trainer = Trainer(ctx, policy, examples, partial(pad_collate, pad_id=pad), sft_loss_fn, progress=False,
                      count_items=count_label_tokens,
                      batch_plan=chunked_plan(len(examples), args.batch, 0, shuffle=False))
    trainer.train()
    metrics.close()
    return [r for r in read_metrics(work / "sft" / "metrics.jsonl") if "tokens_per_s" in r][-1]["tokens_per_s"]


def run_trl(model_dir: Path, examples: list[dict], args, work: Path) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    ds = Dataset.from_list([{"input_ids": e["input_ids"], "assistant_masks": [int(x != -100) for x in e["labels"]]}
                            for e in examples])
    times = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            times["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            times["end"] = time.perf_counter()

    cfg = SFTConfig(output_dir=str(work), per_device_train_batch_size=args.batch, num_train_epochs=1,
                    learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
                    bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                    save_strategy="no", logging_steps=args.steps, max_length=args.max_length, packing=False,
                    dataloader_num_workers=0, disable_tqdm=True, seed=0, data_seed=0, assistant_only_loss=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
    trainer.train()
    return sum(len(e["input_ids"]) for e in examples) / (times["end"] - times["start"])


def run_bare(model_dir: Path, examples: list[dict], args, work: Path) -> float:
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from posttrain.training.batching import pad_collate

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, fused=True)
    batches = [pad_collate(examples[i : i + args.batch], pad_id=1) for i in range(0, len(examples), args.batch)]
    start = time.perf_counter()
    for b in batches:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return sum(b["n_tokens"] for b in batches) / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--only", default="posttrain,trl,bare")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import logging

    logging.disable(logging.WARNING)
    from posttrain.models import init_tiny_model

    runners = {"posttrain": run_posttrain, "trl": run_trl, "bare": run_bare}
    names = [n for n in args.only.split(",") if n]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = init_tiny_model(tmp / "model", seed=0)
        from transformers import AutoModelForCausalLM

        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
        examples = load_examples(model_dir, args.steps * args.batch, args.max_length)
        pad_frac = 1 - sum(len(e["input_ids"]) for e in examples) / (len(examples) * args.max_length)
        print(f"model {n_params:,} params, {len(examples)} examples, batch {args.batch}, max_length "
              f"{args.max_length} (~{pad_frac:.0%} padding), {args.threads} threads, {args.rounds} rounds")
        # warm-up (oneDNN primitive caches, allocator), so no contender pays it in round 0
        run_bare(model_dir, examples[: 3 * args.batch], args, tmp / "warmup")
        rates: dict[str, list[float]] = {n: [] for n in names}
        peaks = []
        for r in range(args.rounds):
            peaks.append(matmul_peak())
            for name in names:
                rates[name].append(runners[name](model_dir, examples, args, tmp / f"{name}{r}"))
            print(f"round {r}: " + "  ".join(f"{n} {rates[n][-1]:,.0f}" for n in names) + f"  peak {peaks[-1]:.1f} GFLOP/s",
                  flush=True)
    peak = statistics.median(peaks)
    med = {n: statistics.median(v) for n, v in rates.items()}
    print(f"\nfp32 matmul peak: {peak:.1f} GFLOP/s (median of {len(peaks)})")
    for n in names:
        mfu = 6 * n_params * med[n] / 1e9 / peak
        print(f"{n:>10}: {med[n]:>9,.0f} tokens/s  model {6 * n_params * med[n] / 1e9:6.1f} GFLOP/s = {mfu:5.1%} of peak")
    if "trl" in med:
        for n in names:
            if n != "trl":
                print(f"{n} / trl = {med[n] / med['trl']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
