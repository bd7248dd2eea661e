"""``posttrain generate``: sample ``n`` responses per prompt from a model with a rollout
engine (``hf`` or ``vllm``), optionally score them with the verifiers, and report pass@1
and pass@k.

Each output row is the prompt row's columns plus ``sample_index``, ``response``,
``finish_reason`` (``stop``/``length``) and ``num_tokens``; with scoring also ``score``
and ``reason``. Prompts are sent to the engine in chunks; each chunk's scoring runs in the
verifier workers while the next chunk generates. The same model, prompts, options and seed
give the same samples (each chunk's engine seed is derived from the seed and the chunk's
position).

A sample *passes* when its score is at least ``threshold`` (1.0 by default: the verifier
fully satisfied). pass@k is the unbiased estimator of Chen et al. (2021), averaged over
prompts: the chance that at least one of k samples drawn without replacement from a
prompt's n passes.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from posttrain.errors import DataError, PosttrainError

if TYPE_CHECKING:
    from posttrain.rollout.base import RolloutEngine, SamplingConfig

log = logging.getLogger(__name__)

ENGINES = ("hf", "vllm")


# -- pass@k ---------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one prompt with ``n`` samples of which ``c`` pass:
    ``1 - C(n-c, k) / C(n, k)``, computed as a product so that large n cannot overflow."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:  # every k-subset holds a passing sample
        return 1.0
    none_pass = 1.0
    for i in range(n - c + 1, n + 1):
        none_pass *= 1.0 - k / i
    return 1.0 - none_pass


def pass_rates(groups: Sequence[tuple[Sequence[str], Sequence[float]]], ks: Sequence[int],
               threshold: float = 1.0) -> dict[str, Any]:
    """Summary of scored samples. ``groups`` holds one ``(verifier names, sample scores)``
    per prompt. Returns ``{"prompts", "samples", "mean_score", "pass@K"...,
    "per_verifier": {name: {same keys}}}``; a prompt with several verifiers counts toward
    each. A k larger than a prompt's sample count is left out of that summary."""

    def summarize(gs: list[Sequence[float]]) -> dict[str, Any]:
        scores = [s for g in gs for s in g]
        out: dict[str, Any] = {"prompts": len(gs), "samples": len(scores),
                               "mean_score": round(sum(scores) / len(scores), 6) if scores else 0.0}
        for k in ks:
            if gs and all(len(g) >= k for g in gs):
                vals = [pass_at_k(len(g), sum(s >= threshold for s in g), k) for g in gs]
                out[f"pass@{k}"] = round(sum(vals) / len(vals), 6)
        return out

    per: dict[str, list[Sequence[float]]] = defaultdict(list)
    for names, scores in groups:
        for name in names:
            per[name].append(scores)
    summary = summarize([scores for _, scores in groups])
    summary["per_verifier"] = {name: summarize(gs) for name, gs in sorted(per.items())}
    return summary


# -- sampling -------------------------------------------------------------------------


def verifier_names(row: dict) -> list[str]:
    ds = row.get("dataset")
    return list(ds) if isinstance(ds, (list, tuple)) else [ds]


def chunk_seed(seed: int | None, chunk: int) -> int | None:
    """The engine seed of the ``chunk``-th engine call: independent streams per chunk, all
    fixed by ``seed``."""
    if seed is None:
        return None
    import numpy as np

    return int(np.random.SeedSequence([int(seed), chunk]).generate_state(1)[0])


def generate_samples(engine: "RolloutEngine", rows: Sequence[dict], prompt_ids: Sequence[Sequence[int]],
                     prompts: Sequence[list[dict]], *, n: int, sampling: "SamplingConfig", scorer=None,
                     batch_size: int = 64, progress: bool = True) -> list[dict]:
    """Sample ``n`` responses for every prompt row; returns one row per sample, grouped by
    prompt, in prompt order. ``prompt_ids`` are the rows' prompts in the chat template
    (ending in the generation prompt) and ``prompts`` their prompt turns. With a started
    ``posttrain.verifiers.Scorer``, each chunk's samples are scored while the next chunk
    generates, and rows get ``score`` and ``reason``."""
    import dataclasses

    from tqdm.auto import tqdm

    out: list[dict] = []
    pending: list[tuple[int, Any]] = []  # (first output row of the chunk, future)
    bar = tqdm(total=len(rows) * n, desc="generate", unit="sample", disable=not progress)
    for chunk, start in enumerate(range(0, len(rows), batch_size)):
        stop = min(start + batch_size, len(rows))
        chunk_sampling = dataclasses.replace(sampling, seed=chunk_seed(sampling.seed, chunk))
        rollouts = engine.generate([list(p) for p in prompt_ids[start:stop]], n, chunk_sampling)
        if len(rollouts) != (stop - start) * n:
            raise RuntimeError(f"engine returned {len(rollouts)} samples for {stop - start} prompts x {n}")
        first = len(out)
        seen: dict[int, int] = defaultdict(int)
        to_score = []
        for i, ids, text, reason in zip(rollouts.prompt_index, rollouts.token_ids, rollouts.texts,
                                        rollouts.finish_reasons):
            row = rows[start + i]
            out.append({**row, "sample_index": seen[i], "response": text, "finish_reason": reason,
                        "num_tokens": len(ids)})
            seen[i] += 1
            if scorer is not None:
                to_score.append({"response": text, "dataset": row["dataset"], "ground_truth": row["ground_truth"],
                                 "prompt": prompts[start + i][-1]["content"]})
        if scorer is not None:
            pending.append((first, scorer.submit(to_score)))
        bar.update(len(out) - first)
    bar.close()
    failed = {"errors": 0, "timeouts": 0, "crashes": 0}
    for first, future in pending:
        results = future.result()
        for j, res in enumerate(results):
            out[first + j]["score"] = float(res.score)
            out[first + j]["reason"] = res.reason
        failed["errors"] += results.n_errors
        failed["timeouts"] += results.n_timeouts
        failed["crashes"] += results.n_crashes
    if any(failed.values()):
        log.warning("verifier failures (scored 0): %s", ", ".join(f"{v} {k}" for k, v in failed.items()))
    return out


def summarize_samples(samples: Sequence[dict], n: int, threshold: float = 1.0) -> dict[str, Any]:
    """pass@1, pass@n and mean score, overall and per verifier, of ``generate_samples``'s
    scored output (consecutive runs of ``n`` rows are one prompt's samples)."""
    groups = [(verifier_names(samples[i]), [s["score"] for s in samples[i:i + n]])
              for i in range(0, len(samples), n)]
    summary = pass_rates(groups, sorted({1, n}), threshold)
    summary["threshold"] = threshold
    return summary


# -- the command ----------------------------------------------------------------------


def load_prompt_rows(path: str, *, score: bool, limit: int | None = None) -> tuple[list[dict], list[list[dict]]]:
    """Rows of a prompt file and each row's prompt turns; a row without a prompt (or,
    when scoring, without ``dataset``/``ground_truth`` or with an unknown verifier) is a
    ``DataError`` naming the file and row, raised before any model loads."""
    from posttrain.data.prompts import prompt_messages
    from posttrain.jsonl import read_jsonl

    rows = read_jsonl(path)[:limit]
    if not rows:
        raise DataError(f"{path}: no rows")
    prompts = [prompt_messages(r, f"{path}: row {i}") for i, r in enumerate(rows)]
    if score:
        from posttrain.verifiers.registry import get_verifier
        from posttrain.verifiers.scoring import row_calls

        names: set[str] = set()
        for i, row in enumerate(rows):
            for key in ("dataset", "ground_truth"):
                if key not in row:
                    raise DataError(f"{path}: row {i}: missing `{key}` (needed by --score)")
            try:
                names.update(name for name, _ in row_calls(i, {**row, "response": "", "prompt": None}))
            except ValueError as e:
                raise DataError(f"{path}: {e}") from None
        for name in sorted(names):
            try:
                get_verifier(name)
            except ValueError as e:
                raise DataError(f"{path}: {e}") from None
    return rows, prompts


def tokenize_prompts(tokenizer, prompts: Sequence[list[dict]], source: str) -> list[list[int]]:
    from posttrain.data.chat import prompt_ids

    out = []
    for i, msgs in enumerate(prompts):
        try:
            out.append(prompt_ids(tokenizer, msgs))
        except DataError as e:
            raise DataError(f"{source}: row {i}: {e}") from None
    return out


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    from posttrain.policy import prepare_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    prepare_tokenizer(tokenizer)
    return tokenizer


def make_sampling(*, max_new_tokens: int, temperature: float, top_p: float, top_k: int, seed: int | None,
                  tokenizer) -> "SamplingConfig":
    from posttrain.rollout.base import SamplingConfig

    return SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                          stop_token_ids=(tokenizer.eos_token_id,), seed=seed)


def check_sampling_args(*, n: int, temperature: float, top_p: float, top_k: int, max_new_tokens: int,
                        batch_size: int) -> None:
    """Raise ``PosttrainError`` naming the first impossible option."""
    if n < 1:
        raise PosttrainError(f"-n must be at least 1, got {n}")
    if temperature < 0:
        raise PosttrainError(f"--temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise PosttrainError(f"--top-p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise PosttrainError(f"--top-k must be >= 0, got {top_k}")
    if max_new_tokens < 1:
        raise PosttrainError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise PosttrainError(f"--batch-size must be at least 1, got {batch_size}")


def check_model_dir(model: str) -> None:
    path = Path(model)
    if (model.startswith((".", "/", "~")) or path.exists()) and not (path.expanduser() / "config.json").is_file():
        raise DataError(f"{model}: not a model folder (no config.json)")


def _cmd_generate(args) -> int:
    from posttrain.jsonl import write_jsonl_atomic

    check_sampling_args(n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    if args.workers is not None and args.workers < 0:
        raise PosttrainError(f"--workers must be >= 0, got {args.workers}")
    if args.timeout <= 0:
        raise PosttrainError(f"--timeout must be positive, got {args.timeout}")
    out_path = Path(args.output)
    if not out_path.resolve().parent.is_dir():
        raise PosttrainError(f"-o {args.output}: directory {out_path.resolve().parent} does not exist")
    rows, prompts = load_prompt_rows(args.data, score=args.score, limit=args.limit)
    check_model_dir(args.model)

    scorer = None
    if args.score:
        from posttrain.verifiers.scoring import Scorer

        # Forked now, before any model or engine exists: the workers are small, clean copies.
        scorer = Scorer(workers=args.workers, timeout=args.timeout, reasoning_format=args.reasoning_format).start()
    try:
        tokenizer = load_tokenizer(args.model)
        ids = tokenize_prompts(tokenizer, prompts, args.data)
        sampling = make_sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                 top_p=args.top_p, top_k=args.top_k, seed=args.seed, tokenizer=tokenizer)
        engine = make_generation_engine(args.engine, args.model, tokenizer, dtype=args.dtype, device=args.device,
                                        kv_cache_gb=args.kv_cache_gb)
        try:
            samples = generate_samples(engine, rows, ids, prompts, n=args.n, sampling=sampling, scorer=scorer,
                                       batch_size=args.batch_size)
        finally:
            engine.close()
    finally:
        if scorer is not None:
            scorer.close()
    write_jsonl_atomic(out_path, samples)

    n_tokens = sum(s["num_tokens"] for s in samples)
    stopped = sum(s["finish_reason"] == "stop" for s in samples)
    print(f"generated {len(samples)} samples ({args.n} for each of {len(rows)} prompts), {n_tokens} tokens, "
          f"{stopped / len(samples):.1%} stopped before --max-new-tokens -> {args.output}")
    if args.score:
        summary = summarize_samples(samples, args.n, args.threshold)
        ks = [k for k in summary if k.startswith("pass@")]
        print(f"{' '.join(f'{k} {summary[k]:.4f}' for k in ks)}  mean score {summary['mean_score']:.4f} "
              f"({summary['prompts']} prompts; pass: score >= {args.threshold:g})")
        for name, v in summary["per_verifier"].items():
            print(f"  {name}: {' '.join(f'{k} {v[k]:.4f}' for k in ks)}  mean score {v['mean_score']:.4f} "
                  f"({v['prompts']} prompts)")
        if args.json:
            print(json.dumps(summary))
    return 0


def make_generation_engine(kind: str, model: str, tokenizer, *, dtype: str = "auto",
                           device: str | None = None, kv_cache_gb: int | None = None) -> "RolloutEngine":
    """A rollout engine with its own copy of the model in ``model``. ``vllm`` starts vLLM's
    engine-core process, so call this from a ``__main__``-guarded entry point (the
    ``posttrain`` command is). ``kv_cache_gb`` sizes vLLM's KV cache on a CPU
    (``VLLM_CPU_KVCACHE_SPACE``; unset: the environment's value, else 1 GiB)."""
    from posttrain.rollout import make_engine

    if kind not in ENGINES:
        raise PosttrainError(f"unknown engine {kind!r} (use {' or '.join(ENGINES)})")
    if kind == "hf":
        return make_engine("hf", model, tokenizer, dtype=dtype, device=device)
    return make_engine("vllm", model, tokenizer, dtype=dtype, kv_cache_gib=kv_cache_gb)


def add_parser(sub) -> None:
    from posttrain.verifiers.scoring import DEFAULT_TIMEOUT

    g = sub.add_parser("generate", help="sample n responses per prompt with a rollout engine (optionally scored)",
                       description=__doc__.split("\n\n")[0])
    g.add_argument("model", help="a save_pretrained folder or hub id")
    g.add_argument("--data", required=True, help="JSONL prompt rows: messages|prompt (+ dataset, ground_truth to score)")
    g.add_argument("-o", "--output", required=True, help="one JSONL row per sample (written atomically)")
    g.add_argument("-n", type=int, default=8, help="samples per prompt (default: %(default)s)")
    g.add_argument("--engine", choices=ENGINES, default="hf", help="rollout engine (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=1.0, help="0 is greedy (default: %(default)s)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: %(default)s)")
    g.add_argument("--top-k", type=int, default=0, help="0 disables it (default: %(default)s)")
    g.add_argument("--max-new-tokens", type=int, default=256, help="default: %(default)s")
    g.add_argument("--seed", type=int, default=0, help="same seed, same samples (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=64, help="prompts per engine call (default: %(default)s)")
    g.add_argument("--limit", type=int, default=None, help="first N prompt rows only")
    g.add_argument("--score", action="store_true", help="score samples with the rows' verifiers; print pass@1/pass@n")
    g.add_argument("--threshold", type=float, default=1.0,
                   help="a sample passes when its score is at least this (default: %(default)s)")
    g.add_argument("--json", action="store_true", help="with --score: print the summary as one JSON line last")
    g.add_argument("--workers", type=int, default=None, help="verifier worker processes (default: CPUs per rank)")
    g.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per verifier call")
    g.add_argument("--no-reasoning-format", dest="reasoning_format", action="store_false",
                   help="verifiers judge the whole response, not the final answer after </think>")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on GPUs, fp32 on CPUs), float32, bfloat16")
    g.add_argument("--device", default=None, help="hf engine: cpu, cuda, cuda:1 ...")
    g.add_argument("--kv-cache-gb", type=int, default=None,
                   help="vllm engine on a CPU: KV-cache GiB (default: $VLLM_CPU_KVCACHE_SPACE, else 1)")
    g.set_defaults(func=_cmd_generate)
