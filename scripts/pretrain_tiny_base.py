"""Pretrain the tiny OLMo-2 base that ``recipes/tiny.yaml`` post-trains.

How the shipped ``posttrain/models/tiny_base/`` was made (run once, from the repo root):

    python scripts/pretrain_tiny_base.py --out posttrain/models/tiny_base

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
4. Saved in bf16 safetensors (about 7 MB); ``Policy.load`` upcasts to fp32 on CPU.
   ``posttrain_base.json`` beside it records the settings and the final loss.

The shipped one used the defaults (360 steps of 16 x 256 tokens, 1.47M tokens, peak lr
3e-3): 1470 s on the shared 2-core CPU, final train loss 0.37 (the question tokens are
unpredictable, so about 0.2 is the floor). As a plain-text model (prompt ``{question}\n``,
greedy) it answers 9% of the 200 first held-out ``data/tiny/eval.jsonl`` questions right:
it has the format and the column sums but still miscopies operands; SFT goes on from here.
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


def corpus(seed: int, n_docs: int) -> list[str]:
    """Question + worked answer documents over the training triples, seeded."""
    train, _held = tiny_task.split_keys(seed)
    rng = random.Random(f"pretrain-{seed}")
    docs = []
    for key in tiny_task._draw(train, n_docs, rng):
        p = tiny_task.problem_from_key(key, rng)
        docs.append(f"{tiny_task.ask(p, rng)}\n{tiny_task.solve(p)}")
    return docs


def pack(docs: list[str], tokenizer, block: int) -> torch.Tensor:
    """Concatenate documents, each followed by EOS, and cut into ``block``-token rows."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        stream.extend(ids + [eos])
    n = len(stream) // block
    return torch.tensor(stream[: n * block], dtype=torch.long).view(n, block)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="posttrain/models/tiny_base", help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="model init, data split and data order")
    ap.add_argument("--steps", type=int, default=360, help="optimizer steps")
    ap.add_argument("--batch", type=int, default=16, help="blocks per step")
    ap.add_argument("--block", type=int, default=256, help="tokens per block")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    ap.add_argument("--warmup", type=int, default=20, help="warmup steps")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--save-every", type=int, default=100, help="also save every N steps (a long run can be cut short)")
    args = ap.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        init_tiny_model(tmp, seed=args.seed)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    tokens_needed = args.steps * args.batch * args.block
    docs = corpus(args.seed, n_docs=tokens_needed // 60 + 1000)
    data = pack(docs, tokenizer, args.block)
    print(f"corpus: {len(docs)} documents, {data.numel()} tokens in {len(data)} blocks of {args.block}")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(data), generator=gen)
    model.train()
    start, losses = time.time(), []
    for step in range(args.steps):
        idx = order[(torch.arange(args.batch) + step * args.batch) % len(data)]
        batch = data[idx]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            recent = sum(losses[-50:]) / len(losses[-50:])
            print(f"step {step:5d}  loss {recent:.4f}  lr {sched.get_last_lr()[0]:.2e}  {time.time() - start:6.0f}s",
                  flush=True)
        if (step + 1) % args.save_every == 0 or step == args.steps - 1:
            save(model, tokenizer, Path(args.out), args, step + 1, losses, time.time() - start)


def save(model, tokenizer, out: Path, args, steps_done: int, losses: list[float], seconds: float) -> None:
    """Write the bf16 copy and its provenance; training goes on in fp32."""
    import copy

    out.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {**vars(args), "steps_done": steps_done, "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
            "seconds": round(seconds), "tokens": steps_done * args.batch * args.block,
            "note": "pretrained base: next-token loss on plain task text from the training triples only; "
                    "no chat template, saved in bf16 (upcast to fp32 on load)"}
    meta.pop("out")
    (out / "posttrain_base.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"saved {out} at step {steps_done} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB)", flush=True)


if __name__ == "__main__":
    main()
