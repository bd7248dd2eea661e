"""``posttrain eval``: greedy generation on held-out prompts, scored by the verifiers.

A row holds the prompt as ``messages`` (the turns before the answer) or ``prompt`` (one
user message), and ``dataset`` (verifier name or list) with ``ground_truth``, as in
open-instruct's RLVR datasets. Accuracy is the mean verifier score, overall and per
verifier. ``--suite gsm8k,math500,ifeval`` runs the standard evaluations instead
(``posttrain.eval_suites``)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from posttrain.data.prompts import prompt_messages
from posttrain.errors import DataError
from posttrain.jsonl import read_jsonl, write_jsonl_atomic


def summarize(rows: list[dict], scores: list[float]) -> dict[str, Any]:
    """``{"n", "accuracy", "per_verifier": {name: {"n", "accuracy"}}}``; a row with several
    verifiers counts toward each of them."""
    per: dict[str, list[float]] = defaultdict(list)
    for row, s in zip(rows, scores):
        names = row["dataset"] if isinstance(row["dataset"], list) else [row["dataset"]]
        for name in names:
            per[name].append(s)
    n = len(scores)
    return {
        "n": n,
        "accuracy": round(sum(scores) / n, 6) if n else 0.0,
        "per_verifier": {k: {"n": len(v), "accuracy": round(sum(v) / len(v), 6)} for k, v in sorted(per.items())},
    }


def check_rows(rows: list[dict], source: str) -> None:
    """Fail on a row without a prompt, ``dataset`` or ``ground_truth``, or with an unknown
    verifier, before any model loads or generates."""
    from posttrain.verifiers.registry import get_verifier

    names = set()
    for i, row in enumerate(rows):
        prompt_messages(row, f"{source}: row {i}")
        for key in ("dataset", "ground_truth"):
            if key not in row:
                raise DataError(f"{source}: row {i}: missing `{key}`")
        names.update(row["dataset"] if isinstance(row["dataset"], list) else [row["dataset"]])
    for name in sorted(names):
        try:
            get_verifier(name)
        except ValueError as e:
            raise DataError(f"{source}: {e}") from None


class SharedGeneration:
    """``policy`` with its ``generate`` split between the processes of a multi-process
    run: the conversations are ordered and batched exactly as ``Policy.generate`` does
    (longest first, ``batch_size`` per batch), each process generates its share of the
    batches, and every process gets every text in the original order. A batch holds the
    same conversations whichever process runs it, so the texts are one process's, token
    for token. On one process it is ``policy.generate`` itself. Everything else is the
    policy's."""

    def __init__(self, policy):
        self.policy = policy

    def __getattr__(self, name: str):
        return getattr(self.policy, name)

    def generate(self, conversations, *, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                 batch_size: int = 32, progress: bool = False) -> list[str]:
        from posttrain.distributed import map_shared, world_and_rank

        world, rank = world_and_rank()
        opts = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        if world == 1:
            return self.policy.generate(conversations, batch_size=batch_size, progress=progress, **opts)
        lengths = [len(self.policy.chat_ids(m, add_generation_prompt=True)) for m in conversations]
        order = sorted(range(len(conversations)), key=lambda i: -lengths[i])  # as Policy.generate (stable)
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]

        def run(mine):
            # One batch per call, handed over in its order: Policy.generate's own sort
            # keeps it, so the padded batch is the one a single process would build.
            return [self.policy.generate([conversations[i] for i in b], batch_size=len(b), **opts) for b in mine]

        texts = [""] * len(conversations)
        for b, out in zip(batches, map_shared(run, batches)):
            for i, text in zip(b, out):
                texts[i] = text
        return texts


def evaluate(policy, rows: list[dict], *, max_new_tokens: int = 128, batch_size: int = 64,
             workers: int | None = None, progress: bool = True, source: str = "data") -> tuple[dict, list[dict]]:
    """Generate greedily for every row, score with the verifiers; returns the summary and
    the rows with ``response``, ``score`` and ``reason`` added. Callers run ``check_rows``
    first, before loading the model, so bad rows cost no model load or generation."""
    from posttrain.distributed import map_shared
    from posttrain.verifiers.scoring import score_rows

    convs = [prompt_messages(r, f"{source}: row {i}") for i, r in enumerate(rows)]
    responses = policy.generate(convs, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    scored_in = [{**r, "response": resp, "prompt": c[-1]["content"]} for r, resp, c in zip(rows, responses, convs)]
    try:
        # Split between processes (one call on a single process), like the generation.
        results = map_shared(lambda part: score_rows(part, workers=workers), scored_in)
    except ValueError as e:  # a malformed row or an unknown verifier name
        raise DataError(f"{source}: {e}") from None
    out = [{**r, "score": float(res.score), "reason": res.reason} for r, res in zip(scored_in, results)]
    return summarize(rows, [o["score"] for o in out]), out


def evaluate_recipe_stage(ctx) -> dict:
    """Run the recipe's ``eval`` section on a finished stage's model and record it in the
    stage's metrics and ``eval.json``: the prompt file's summary at the top level, each
    suite's under ``suites``. Every process of a multi-process run calls it: each loads
    the model whole and generates (and scores prompt-file rows) for its share
    (``SharedGeneration``); the main process writes the results."""
    from posttrain.distributed import world_and_rank
    from posttrain.policy import Policy

    cfg = ctx.recipe.eval
    world, rank = world_and_rank()
    main = rank == 0
    rows = None
    if cfg.data is not None:
        rows = read_jsonl(cfg.data)[: cfg.limit]
        check_rows(rows, cfg.data)
    loaded = []
    if cfg.suites:
        from posttrain.eval_suites import get_suite, load_suite_rows

        loaded = [(s, load_suite_rows(s, cfg.suite_data.get(s.name), cfg.limit)) for s in map(get_suite, cfg.suites)]
    device = None
    if world > 1:
        from accelerate import PartialState

        device = str(PartialState().device)  # this process's own GPU (or the CPU)
    policy = SharedGeneration(Policy.load(ctx.model_dir, dtype=ctx.recipe.model.dtype, device=device))
    summary, scored = {}, []
    if rows is not None:
        summary, scored = evaluate(policy, rows, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                   source=cfg.data, progress=main)
        ctx.metrics.log(-1, **{"eval/accuracy": summary["accuracy"], "eval/n": summary["n"]})
        if main:
            print(f"[{ctx.name}] eval accuracy {summary['accuracy']:.4f} on {summary['n']} rows", file=sys.stderr)
    if loaded:
        from posttrain.eval_suites import run_suites

        # Suites score on every process (cheap next to generating); generation is shared.
        suites, suite_rows = run_suites(policy, loaded, batch_size=cfg.batch_size, progress=main)
        summary.update(suites)
        scored += suite_rows
        for name, s in suites["suites"].items():
            ctx.metrics.log(-1, **{f"eval/{name}/accuracy": s["accuracy"], f"eval/{name}/n": s["n"]})
            if main:
                print(f"[{ctx.name}] {name} accuracy {s['accuracy']:.4f} on {s['n']} rows", file=sys.stderr)
    if main:
        (ctx.stage_dir / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_jsonl_atomic(ctx.stage_dir / "eval_responses.jsonl", scored)
    return summary


def _check_model_arg(model_arg: str) -> None:
    model = Path(model_arg)
    if (model_arg.startswith((".", "/")) or model.exists()) and not (model / "config.json").is_file():
        raise DataError(f"{model_arg}: not a model folder (no config.json)")


def _cmd_eval_suites(args) -> int:
    """``--suite``: the standard evaluations, each from its hub data set or ``--data``."""
    from posttrain.eval_suites import format_summary, load_suite_rows, parse_data_args, parse_suites, run_suites
    from posttrain.policy import Policy

    suites = parse_suites(args.suite)
    sources = parse_data_args(suites, args.data)
    loaded = [(s, load_suite_rows(s, sources[s.name], args.limit)) for s in suites]  # all before the model
    _check_model_arg(args.model)
    policy = Policy.load(args.model, revision=args.revision, dtype=args.dtype, device=args.device)
    summary, scored = run_suites(policy, loaded, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                 workers=args.workers)
    if args.output:
        write_jsonl_atomic(Path(args.output), scored)
    print("\n".join(format_summary(summary)))
    if args.json:
        print(json.dumps(summary))
    return 0


def _cmd_eval(args) -> int:
    from posttrain.policy import Policy

    if args.suite:
        return _cmd_eval_suites(args)
    if not args.data or len(args.data) != 1:
        raise DataError("give one --data FILE (rows with dataset and ground_truth), or --suite NAMES")
    data = args.data[0]
    rows = read_jsonl(data)[: args.limit]
    if not rows:
        raise DataError(f"{data}: no rows")
    check_rows(rows, data)
    _check_model_arg(args.model)
    policy = Policy.load(args.model, revision=args.revision, dtype=args.dtype, device=args.device)
    summary, scored = evaluate(policy, rows, max_new_tokens=args.max_new_tokens or 128,
                               batch_size=args.batch_size, workers=args.workers, source=data)
    if args.output:
        write_jsonl_atomic(Path(args.output), scored)
    print(f"accuracy {summary['accuracy']:.4f} on {summary['n']} rows")
    for name, v in summary["per_verifier"].items():
        print(f"  {name}: {v['accuracy']:.4f} ({v['n']} rows)")
    if args.json:
        print(json.dumps(summary))
    return 0


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="greedy generation on held-out prompts, scored by the verifiers")
    e.add_argument("model", help="a save_pretrained folder or hub id")
    e.add_argument("--suite", help="standard evaluations, comma-separated: gsm8k, math500, ifeval")
    e.add_argument("--data", action="append", metavar="[SUITE=]FILE",
                   help="without --suite: JSONL rows with messages|prompt, dataset, ground_truth. With "
                        "--suite: a local copy (or hub name) of a suite's data, SUITE=FILE (repeatable; "
                        "plain FILE for a single suite); suites without one load their hub data set")
    e.add_argument("-o", "--output", help="write each row with response, score, reason here")
    e.add_argument("--json", action="store_true", help="print the summary as one JSON line last")
    e.add_argument("--max-new-tokens", type=int, default=None,
                   help="default 128, or with --suite each suite's usual length (gsm8k 512, math500 1024, "
                        "ifeval 1280)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--limit", type=int, default=None, help="first N rows only (of each suite)")
    e.add_argument("--workers", type=int, default=None, help="verifier worker processes")
    e.add_argument("--revision", default=None)
    e.add_argument("--dtype", default="auto")
    e.add_argument("--device", default=None)
    e.set_defaults(func=_cmd_eval)
