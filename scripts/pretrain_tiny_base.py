"""Pretrain the tiny OLMo-2 base that ``recipes/tiny.yaml`` post-trains.

How the shipped ``posttrain/models/tiny_base/`` was made: four runs, each continuing the
one before with ``--init-from`` (the CPU was shared, so the pretraining went in pieces;
each run's ``posttrain_base.json`` nests the one it continued from under
``init_from_run``). From the repo root, one thread each:

    python scripts/pretrain_tiny_base.py --threads 1 --out /tmp/base_a
    python scripts/pretrain_tiny_base.py --threads 1 --init-from /tmp/base_a --data-seed 1 \\
        --lr 2e-3 --steps 1100 --stop-after 400 --out /tmp/base_b
    python scripts/pretrain_tiny_base.py --threads 1 --init-from /tmp/base_b --data-seed 2 \\
        --lr 1.5e-3 --warmup 10 --steps 300 --save-every 50 --out /tmp/base_c
    python scripts/pretrain_tiny_base.py --threads 1 --init-from /tmp/base_c --data-seed 3 \\
        --lr 1e-3 --warmup 10 --steps 240 --save-every 60 --out posttrain/models/tiny_base

Run 4 came after the task gained many more trained phrasings (lead-ins, expressions and
sentence shapes); it pretrains on documents in the new phrasing set.

1. ``posttrain.models.init_tiny_model(seed=0)``: the default ~3.6M-parameter OLMo-2 and its
   byte-level BPE tokenizer, random weights.
2. A plain-text corpus made by ``posttrain.data.tiny_task`` from the *training* triples only
   (the held-out (a, b, op) triples of ``data/tiny`` never appear): documents
   ``{question}\\n{worked answer}`` in the task's phrasings, separated by ``<|endoftext|>``
   and packed into fixed-length blocks. No chat template, no role tokens, no loss masking:
   it is next-token pretraining of a *base* model on in-domain text, the way real
   post-training starts from a pretrained LM. Chat formatting is SFT's job.
3. AdamW, linear warmup then cosine decay, fp32 on CPU, a fixed number of steps (not a
   time budget, so the result depends on the seed alone up to float nondeterminism).
4. Saved in fp32 safetensors (13.7 MB), as trained. ``posttrain_base.json`` beside it
   records the settings, the final loss and the wall time.

The shipped one, by run (1,340 steps of 16 x 256 tokens in all, 5.5M tokens; wall times on
this project's 2-core CPU while other work shared it, one thread: with two, OpenMP threads
on busy cores wait for each other and a step took 2-4x longer):

    run  steps  peak lr  train loss  wall    plain-text greedy accuracy, held-out triples
    1    400    3e-3     0.53        1388 s  1.5% (first 200 eval questions)
    2    400    2e-3     0.30        1133 s  30.5% (first 200)
    3    300    1.5e-3   0.23        1360 s  88.5% (all 600: trained phrasings 95.0%,
                                             held-out phrasings 75.5%, negative results 84.8%)
    4    240    1e-3     0.24         600 s  94.5% (all 600 of the regenerated eval: trained
                                             phrasings 98.0%, held-out phrasings 87.5%; run
                                             3's base there: 62.3%, held-out phrasings 65.5%;
                                             on run 3's eval file: 95.0%, 98.0% / 89.0%)

"Plain-text accuracy": ``<|endoftext|>{question}\n`` from ``data/tiny/eval.jsonl``,
greedy, the number after ``####`` compared with the answer. The loss fell slowly for the
first ~700 steps, then quickly (0.50 to 0.23) as the column arithmetic clicked; at that
point the base does the task in plain text, and SFT only has to move it into the chat
format (and the held-out phrasings are where it is weakest).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from posttrain.data import tiny_task  # noqa: E402
from posttrain.models import init_tiny_model  # noqa: E402


def corpus(seed: int, n_docs: int, data_seed: int | None = None) -> list[str]:
    """Question + worked answer documents over the training triples of ``seed``'s split,
    asked in the trained phrasings only; ``data_seed`` (default: ``seed``) draws them."""
    rng = random.Random(f"pretrain-{seed if data_seed is None else data_seed}")
    return [f"{tiny_task.ask(p, rng)}\n{tiny_task.solve(p)}" for p in tiny_task.training_problems(seed, n_docs, rng)]


def pack(docs: list[str], tokenizer, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each document as ``<|endoftext|> text <|endoftext|>`` (BOS and EOS are the same token,
    as in the chat template), packed whole into rows of at most ``block`` tokens. Returns
    ``(input_ids, labels, position_ids)``; positions restart at 0 for every document, so
    attention stays inside it, as in SFT's packing (a question's numbers are copied from
    that question only, and every document starts where a chat starts: at position 0
    after BOS). Row padding is labelled -100."""
    from posttrain.training.batching import packed_collate

    eos = tokenizer.eos_token_id
    examples = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        seq = [eos] + ids + [eos]
        examples.append({"input_ids": seq, "labels": seq})
    batch = packed_collate(examples, tokenizer.pad_token_id, block, width=block)
    return batch["input_ids"], batch["labels"], batch["position_ids"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="posttrain/models/tiny_base", help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="model init, data split, and the data draws unless --data-seed")
    ap.add_argument("--data-seed", type=int, default=None,
                    help="draws the documents and their order (default: --seed); a continued run "
                         "uses a new one so that it sees new draws, not the first run's again")
    ap.add_argument("--init-from", default=None,
                    help="continue from this saved base (its weights; a fresh optimizer and "
                         "schedule) instead of a random init")
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps")
    ap.add_argument("--batch", type=int, default=16, help="blocks per step")
    ap.add_argument("--block", type=int, default=256, help="tokens per block")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    ap.add_argument("--warmup", type=int, default=20, help="warmup steps")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="stop after this many steps of the --steps schedule (a run cut short, "
                         "learning rate not yet decayed, to be continued with --init-from)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--save-every", type=int, default=100, help="also save every N steps (a long run can be cut short)")
    args = ap.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data_seed = args.seed if args.data_seed is None else args.data_seed
    # The earlier run's provenance, read now: --out may be the same folder.
    previous = json.loads((Path(args.init_from) / "posttrain_base.json").read_text()) if args.init_from else None
    if args.init_from:
        tokenizer = AutoTokenizer.from_pretrained(args.init_from)
        model = AutoModelForCausalLM.from_pretrained(args.init_from, dtype=torch.float32)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            init_tiny_model(tmp, seed=args.seed)
            tokenizer = AutoTokenizer.from_pretrained(tmp)
            model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    tokens_needed = args.steps * args.batch * args.block
    docs = corpus(args.seed, n_docs=tokens_needed // 60 + 1000, data_seed=data_seed)
    data, labels, positions = pack(docs, tokenizer, args.block)
    print(f"corpus: {len(docs)} documents, {int((labels != -100).sum())} trained tokens in {len(data)} rows of "
          f"{args.block}")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(data_seed)
    order = torch.randperm(len(data), generator=gen)
    model.train()
    start, losses = time.time(), []
    run_steps = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
    for step in range(run_steps):
        idx = order[(torch.arange(args.batch) + step * args.batch) % len(data)]
        loss = model(input_ids=data[idx], labels=labels[idx], position_ids=positions[idx]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == run_steps - 1:
            recent = sum(losses[-50:]) / len(losses[-50:])
            print(f"step {step:5d}  loss {recent:.4f}  lr {sched.get_last_lr()[0]:.2e}  {time.time() - start:6.0f}s",
                  flush=True)
        if (step + 1) % args.save_every == 0 or step == run_steps - 1:
            save(model, tokenizer, Path(args.out), args, step + 1, losses, time.time() - start, previous)


def save(model, tokenizer, out: Path, args, steps_done: int, losses: list[float], seconds: float,
         previous: dict | None = None) -> None:
    """Write the fp32 weights and their provenance (fp32 because that is what CPU training
    uses and a bf16 copy would round away the pretraining's last steps; ~14 MB)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {**vars(args), "steps_done": steps_done, "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
            "seconds": round(seconds), "tokens": steps_done * args.batch * args.block,
            "note": "pretrained base: next-token loss on plain task text from the training triples only, "
                    "asked in the trained phrasings only; no chat template; saved in fp32"}
    meta.pop("out")
    meta["init_from_run"] = previous  # the run continued from (its settings, loss, time), or null
    (out / "posttrain_base.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"saved {out} at step {steps_done} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB)", flush=True)


if __name__ == "__main__":
    main()
