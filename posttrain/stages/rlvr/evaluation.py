"""The in-loop eval of the RLVR stage, on held-out prompts with the rollout engine (which
holds the current weights: the hf engine shares them, the vLLM engine is synced after
every update):

- greedy decoding, scored by the prompts' verifiers: ``eval/accuracy`` (the mean
  verifier score, as ``posttrain eval`` reports it) and ``eval/accuracy/<verifier>``;
  ``eval/length_mean`` and ``eval/truncated_frac``;
- with ``eval_samples`` = k > 0, k samples per prompt at the training temperature, and
  the unbiased pass@k estimator (``posttrain.generation.pass_rates``; a sample passes
  when its score is 1): ``eval/pass@1``, ``eval/pass@k`` (and powers of two between),
  overall and per verifier.

Scores are taken with multiplier 1 (verifier scores in [0, 1]), whatever the training
reward's multiplier. Runs on the main process only; the others return nothing.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

from posttrain.data.prompts import Prompt
from posttrain.rollout import SamplingConfig


def pass_ks(n: int) -> list[int]:
    """1, the powers of two below ``n``, and ``n``."""
    ks, k = {1, n}, 2
    while k < n:
        ks.add(k)
        k *= 2
    return sorted(ks)


def _names(dataset) -> list[str]:
    return [n.lower() for n in (dataset if isinstance(dataset, list) else [dataset])]


class InLoopEval:
    """``evaluate(step) -> dict`` for ``OnlineTrainer`` (module docstring)."""

    def __init__(self, prompts: Sequence[Prompt], engine, scorer, *, max_new_tokens: int, temperature: float,
                 samples: int, stop_token_ids, seed: int, weights: dict | None = None, is_main: bool = True):
        self.prompts, self.engine, self.scorer = list(prompts), engine, scorer
        self.samples, self.seed, self.weights, self.is_main = samples, seed, dict(weights or {}), is_main
        self.greedy = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0,
                                     stop_token_ids=tuple(stop_token_ids))
        self.sampled = dataclasses.replace(self.greedy, temperature=temperature)

    def __call__(self, step: int) -> dict:
        if not self.is_main or not self.prompts:
            return {}
        from posttrain.generation import pass_rates
        from posttrain.stages.rlvr.source import derived_seed, generate_checked

        t0 = time.perf_counter()
        ids = [p.token_ids for p in self.prompts]
        self.engine.wake()
        greedy = self.engine.generate(ids, 1, self.greedy)
        sampled = None
        if self.samples:
            seed = derived_seed(self.seed, step, 1 << 30)
            sampled = generate_checked(self.engine, ids, self.samples,
                                       dataclasses.replace(self.sampled, seed=seed))
        self.engine.sleep()
        greedy_scores = self._score(greedy)
        out = {"eval/accuracy": sum(greedy_scores) / len(greedy_scores),
               "eval/length_mean": greedy.num_tokens / len(greedy),
               "eval/truncated_frac": sum(r == "length" for r in greedy.finish_reasons) / len(greedy)}
        per: dict[str, list[float]] = {}
        for p, s in zip(self.prompts, greedy_scores):
            for name in _names(p.dataset):
                per.setdefault(name, []).append(s)
        out.update({f"eval/accuracy/{k}": sum(v) / len(v) for k, v in sorted(per.items())})
        if sampled is not None:
            scores = self._score(sampled)
            n = self.samples
            groups = [(_names(p.dataset), scores[i * n : (i + 1) * n]) for i, p in enumerate(self.prompts)]
            summary = pass_rates(groups, pass_ks(n), threshold=1.0)
            out.update({f"eval/{k}": v for k, v in summary.items() if k.startswith("pass@")})
            for name, s in summary["per_verifier"].items():
                out.update({f"eval/{k}/{name}": v for k, v in s.items() if k.startswith("pass@")})
        out["time/eval_s"] = time.perf_counter() - t0
        return out

    def _score(self, rollouts) -> list[float]:
        rows = [self.prompts[i].score_row(text) for i, text in zip(rollouts.prompt_index, rollouts.texts)]
        return [float(r.score) for r in self.scorer.submit(rows, weights=self.weights).result()]
