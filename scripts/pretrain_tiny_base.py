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
4. Saved in fp32 safetensors (13.7 MB), as trained. ``posttrain_base.json`` beside it
   records the settings, the final loss and the wall time.

The shipped one: ``--threads 1`` and the defaults (400 steps of 16 x 256 tokens, 1.64M
tokens, peak lr 3e-3): 1388 s on this project's 2-core CPU while other work shared it
(one thread: with two, OpenMP threads on busy cores wait for each other and a step took
2-4x longer), final train loss 0.53. Prompted in plain text as in pretraining
(``<|endoftext|>{question}\n``, greedy) it continues 48 of 48 held-out questions with the
task's working, the right operation restated and ``#### N`` to end, but gets only 2 of
them right (operands miscopied, column sums wrong): it has the format, not yet the
arithmetic; SFT goes on from here.
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
    """Question + worked answer documents over the training triples, asked in the trained
    phrasings only, seeded."""
    rng = random.Random(f"pretrain-{seed}")
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
    ap.add_argument("--seed", type=int, default=0, help="model init, data split and data order")
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps")
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
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(data), generator=gen)
    model.train()
    start, losses = time.time(), []
    for step in range(args.steps):
        idx = order[(torch.arange(args.batch) + step * args.batch) % len(data)]
        loss = model(input_ids=data[idx], labels=labels[idx], position_ids=positions[idx]).loss
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
    (out / "posttrain_base.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"saved {out} at step {steps_done} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB)", flush=True)


if __name__ == "__main__":
    main()
