"""Run under ``torchrun --nproc_per_node N`` (gloo, N = 1 or 2): the preparation a stage
does on every process, shared rather than repeated. Each process writes
``OUT/rank<r>.json``; ``test_shared_preparation.py`` compares the runs of 1 and 2 processes.

- tokenization cache (``posttrain.data.cache.cached``): which process built the entry,
  and that a build failing on the main process fails on every process alike;
- the DPO reference pass (``cached_reference_logps``): the scores, the pairs this process
  forwarded, and a second call's cache hit;
- the recipe eval's generation and scoring (``evaluate`` with ``SharedGeneration``): the
  responses, scores and accuracy, and the prompts this process generated for.

    python prep_checks.py MODEL_DIR OUT CACHE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main(model_dir: str, out: Path, cache: Path) -> None:
    from posttrain.data import tiny_task
    from posttrain.data.cache import cached
    from posttrain.data.preference import tokenize_pairs
    from posttrain.data.reference_cache import cached_reference_logps
    from posttrain.distributed import world_and_rank
    from posttrain.errors import DataError
    from posttrain.evaluation import SharedGeneration, evaluate
    from posttrain.policy import Policy

    dist.init_process_group("gloo")
    world, rank = world_and_rank()
    report: dict = {"world": world}

    builds = []

    def build():
        builds.append(rank)
        return [{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}], {"rows": 2}

    examples, stats = cached({"check": "prep"}, build, cache / "tokenized", desc="check")
    report["tokenization"] = {"built": bool(builds), "examples": examples, "hit": stats["cache_hit"]}

    policy = Policy.load(model_dir, device="cpu", dtype="float32")
    rows = tiny_task.generate(0, {"dpo_train": 20, "eval": 24})
    pairs, _ = tokenize_pairs(policy.tokenizer, rows["dpo_train"], 256)
    forwarded = {"rows": 0, "prefill_rows": 0}

    def count(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        forwarded["rows"] += ids.shape[0]
        if ids.shape[1] > 1:  # a prompt's first forward; decoding steps feed one token
            forwarded["prefill_rows"] += ids.shape[0]

    # On the decoder: the reference pass calls it directly (the LM head only where scored),
    # generation through the model's forward. A pair is one row (prefix sharing).
    hook = policy.model.model.register_forward_pre_hook(count, with_kwargs=True)
    pad = policy.tokenizer.pad_token_id
    # 80 padded tokens per batch: the 20 pairs make several batches to share
    chosen, rejected, hit = cached_reference_logps(policy.model, pairs, pad, "cpu", "check", cache / "ref",
                                                   max_tokens=80, progress=False)
    scored_rows = forwarded["rows"]
    c2, r2, hit2 = cached_reference_logps(policy.model, pairs, pad, "cpu", "check", cache / "ref", max_tokens=80,
                                          progress=False)
    report["reference"] = {"chosen": chosen.tolist(), "rejected": rejected.tolist(), "hit": hit,
                           "pairs_forwarded": scored_rows, "second_hit": hit2,
                           "second_forwarded": forwarded["rows"] - scored_rows,
                           "second_equal": bool(torch.equal(c2, chosen) and torch.equal(r2, rejected)),
                           "n": len(pairs)}

    forwarded["prefill_rows"] = 0
    summary, scored = evaluate(SharedGeneration(policy), rows["eval"], max_new_tokens=24, batch_size=5, workers=1,
                               progress=False)
    hook.remove()
    report["eval"] = {"summary": summary, "responses": [r["response"] for r in scored],
                      "scores": [r["score"] for r in scored], "prompts_generated": forwarded["prefill_rows"],
                      "n": len(rows["eval"])}

    # A build that fails on the main process: the others must not be left at the barrier
    # (they would see a dead peer); each meets the failure itself.
    def failing_build():
        builds.append(rank)
        raise DataError("no such source")

    try:
        cached({"check": "failing"}, failing_build, cache / "tokenized", desc="check")
    except DataError as e:
        report["failed_tokenization"] = {"error": str(e), "builds": len(builds)}
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
