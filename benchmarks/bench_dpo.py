"""DPO throughput: posttrain's DPO stage against TRL's ``DPOTrainer``, side by side in one
process on the tiny OLMo-2 with the same pairs, batch size, loss and hyperparameters.

    python benchmarks/bench_dpo.py --pairs 1000

Each side runs one whole epoch, measured from constructing the trainer (tokenization
included) to the end of training, so the reference pass counts: posttrain's
``precompute_reference`` (into a fresh cache directory, so nothing is reused) and TRL's
``precompute_ref_log_probs``; "live" rows score the reference in every step. Runs
alternate A B A B (``--repeats``) and the best time of each is kept, because the
machine's other load makes single timings noisy. Loss: posttrain ``dpo_norm`` vs TRL
``sigmoid_norm`` (the same formula), beta 5; fp32 on CPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def make_data(out: Path, pairs: int) -> Path:
    import json

    from posttrain.data import tiny_task

    rows = tiny_task.generate(0, {"dpo_train": pairs})["dpo_train"]
    path = out / "pairs.jsonl"
    path.write_text("".join(json.dumps({"chosen": r["chosen"], "rejected": r["rejected"]}) + "\n" for r in rows))
    return path


def run_posttrain(model_dir: Path, data: Path, work: Path, args, precompute: bool) -> float:
    from posttrain.metrics import MetricsWriter
    from posttrain.recipe.load import validate_recipe
    from posttrain.stages.context import StageContext
    from posttrain.stages.dpo import run_dpo

    out = Path(tempfile.mkdtemp(dir=work))
    recipe = validate_recipe({
        "output_dir": str(out), "model": {"name_or_path": str(model_dir), "dtype": "float32"},
        "stages": {"dpo": {
            "train_data": [{"path": str(data)}], "per_device_batch_size": args.batch_size, "learning_rate": 5e-7,
            "loss": "dpo_norm", "beta": 5.0, "max_length": args.max_length, "logging_steps": 10,
            "precompute_reference": precompute, "reference_cache_dir": str(out / "refcache")}},
    })
    with MetricsWriter(out / "metrics.jsonl") as writer:
        ctx = StageContext(name="dpo", config=recipe.stages["dpo"], recipe=recipe, input_model=str(model_dir),
                           input_revision=None, stage_dir=out / "dpo", metrics=writer)
        # a fresh data cache too: tokenization is part of the run, as it is in TRL's
        os.environ["POSTTRAIN_CACHE"] = str(out / "cache")
        start = time.perf_counter()
        run_dpo(ctx)
        return time.perf_counter() - start


def run_trl(model_dir: Path, data: Path, work: Path, args, precompute: bool) -> float:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import DPOConfig, DPOTrainer

    out = Path(tempfile.mkdtemp(dir=work))
    ds = datasets.load_dataset("json", data_files=str(data), split="train")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = DPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, learning_rate=5e-7,
        lr_scheduler_type="linear", warmup_steps=0.1, num_train_epochs=1, loss_type=["sigmoid_norm"], beta=5.0,
        max_length=args.max_length, precompute_ref_log_probs=precompute,
        precompute_ref_batch_size=args.batch_size * 8 if precompute else None,
        bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False, report_to="none",
        save_strategy="no", logging_steps=10, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    start = time.perf_counter()
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    trainer.remove_callback(PrinterCallback)  # its per-log print is not part of training
    trainer.train()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2, help="A B rounds; the best time of each is kept")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per side (1 avoids OpenMP stalls on a shared machine)")
    ap.add_argument("--only", choices=["live", "precompute"], help="run one of the two comparisons")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("transformers", "trl", "datasets", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    from posttrain.models import init_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench_dpo_") as tmp:
        work = Path(tmp)
        model_dir = init_tiny_model(work / "model", seed=0)
        data = make_data(work, args.pairs)
        modes = [m for m in ("live", "precompute") if args.only in (None, m)]
        best: dict[tuple[str, str], float] = {}
        for r in range(args.repeats):
            for mode in modes:
                for name, fn in (("posttrain", run_posttrain), ("trl", run_trl)):
                    secs = fn(model_dir, data, work, args, mode == "precompute")
                    key = (name, mode)
                    best[key] = min(best.get(key, float("inf")), secs)
                    print(f"round {r + 1}: {name:9s} {mode:10s} {secs:7.1f} s  {args.pairs / secs:6.1f} pairs/s",
                          flush=True)
        print(f"\n{args.pairs} pairs, batch {args.batch_size}, tiny OLMo-2, fp32 CPU, {args.threads} threads, "
              f"best of {args.repeats}")
        print(f"{'reference':10s} {'posttrain pairs/s':>18s} {'TRL pairs/s':>12s} {'ratio':>7s}")
        for mode in modes:
            ours, theirs = args.pairs / best[("posttrain", mode)], args.pairs / best[("trl", mode)]
            print(f"{mode:10s} {ours:18.1f} {theirs:12.1f} {ours / theirs:6.2f}x")
        if len(modes) == 2:  # posttrain's default (precompute) against TRL's default (live)
            print(f"posttrain precompute vs TRL live: "
                  f"{best[('trl', 'live')] / best[('posttrain', 'precompute')]:.2f}x")


if __name__ == "__main__":
    main()
