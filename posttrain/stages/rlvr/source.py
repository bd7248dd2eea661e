"""Each RL step's batch, from the policy as it is after the previous update.

One step on each process:

1. Prompts: the next ``prompts_per_step`` prompts of a stream that walks through a
   fresh seeded permutation of the prompt set every epoch; a cursor (saved in
   checkpoints) marks how far the stream has been read, so a resumed run reads on where
   the killed one was, dynamic sampling included. Each process takes its own share of
   whole prompts (so groups stay whole on one process).
2. Sampling: ``samples_per_prompt`` responses per prompt from the rollout engine, seeded
   from the stage seed, the step and the round, so a resumed run samples the same.
3. Scoring runs in the verifier workers while this process computes the reference's
   log-probs (``beta > 0``) and the policy's old log-probs (only when the step makes
   more than one update, or a masking rollout correction needs them: with one update
   the trainer's own forward gives them for free, ``loss.py``).
4. Rewards: the Scorer's weighted, multiplied verifier scores; then the non-stop penalty.
5. Dynamic sampling (optional, DAPO): groups whose rewards are all equal are dropped
   and more prompts sampled, up to ``max_sampling_rounds`` rounds; the batch is then cut
   to the step's number of groups. Reference/old log-probs are then computed after the
   filtering, for the kept groups only.
6. The algorithm's per-token fields (advantages), then one ``Sample`` per response.

The step's metrics: rewards, accuracy per verifier, lengths, truncation, dropped
groups, verifier failures, rollout speed and where the time went.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from posttrain.data.prompts import Prompt, stream_prompts
from posttrain.rl.dynamic_sampling import constant_groups
from posttrain.rl.rewards import apply_non_stop_penalty, sequence_rewards, stopped_mask
from posttrain.rollout import SamplingConfig
from posttrain.stages.rlvr.rollouts import ScoredRollouts, to_samples
from posttrain.training import OnlineBatch
from posttrain.training.guards import NonFiniteError

log = logging.getLogger(__name__)

LogprobFn = Callable[[Mapping[str, Any], Sequence[Sequence[int]], Sequence[Sequence[int]]], list[torch.Tensor]]


def derived_seed(*parts: int) -> int:
    """A 31-bit seed that is a pure function of ``parts`` (stage seed, step, round, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint32)[0] >> 1)


def process_share(items: Sequence, rank: int, world: int) -> list:
    """This process's contiguous share of ``items`` (near-equal parts, in order)."""
    bounds = np.linspace(0, len(items), world + 1).round().astype(int)
    return list(items[bounds[rank] : bounds[rank + 1]])



def generate_checked(engine, prompt_ids, n: int, sampling: SamplingConfig):
    """``engine.generate``, with the one failure an RL update can cause there explained: an
    update that blew the weights up to huge but finite values passes the step's NaN/Inf
    guard, and the next sampling step finds non-finite next-token probabilities. torch's
    sampler then raises a bare RuntimeError; a run stopped by bad hyperparameters should say
    so in one line (exit 2), like the guard does for a non-finite loss."""
    try:
        return engine.generate(prompt_ids, n, sampling)
    except RuntimeError as e:
        if "inf" not in str(e) or "nan" not in str(e):
            raise
        raise NonFiniteError(
            "sampling from the policy: its next-token probabilities are not finite (the last update "
            "blew the weights up); lower the learning rate, then resume from an earlier checkpoint "
            f"or start the stage again ({str(e).splitlines()[0]})") from e

class RolloutSource:
    """``produce(step, models) -> OnlineBatch`` for ``OnlineTrainer`` (module docstring).

    ``reference(models, prompts, responses)`` and ``old_logprobs(models, prompts,
    responses)`` give per-sample ``(L,)`` log-probs (None: not needed);
    ``algorithm.sample_fields`` the advantages."""

    def __init__(self, cfg, prompts: list[Prompt], engine, scorer, algorithm, *, seed: int, stop_token_ids,
                 reference: LogprobFn | None, old_logprobs: LogprobFn | None, verifier_names: Sequence[str],
                 rank: int = 0, world: int = 1):
        self.cfg, self.prompts, self.engine, self.scorer, self.algorithm = cfg, prompts, engine, scorer, algorithm
        self.seed, self.rank, self.world = seed, rank, world
        self.stop_token_ids = tuple(stop_token_ids)
        self.reference, self.old_logprobs = reference, old_logprobs
        self.verifier_names = sorted({n.lower() for n in verifier_names})
        self.cursor = 0
        """Prompts of the stream read so far (all processes' shares)."""
        self._failures = np.zeros(3)  # verifier errors, timeouts, crashes since the last step's metrics

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state["cursor"])

    # ------------------------------------------------------------------ one step
    def produce(self, step: int, models: Mapping[str, Any]) -> OnlineBatch:
        cfg = self.cfg
        timings = {"generate_s": 0.0, "score_wait_s": 0.0, "reference_s": 0.0, "old_logprobs_s": 0.0}
        want = len(process_share(range(cfg.prompts_per_step), self.rank, self.world))
        parts, kept, sampled, constant, rounds, generated = [], 0, 0, 0, 0, 0
        last = None
        while True:
            ids = stream_prompts(len(self.prompts), self.cursor, cfg.prompts_per_step, self.seed)
            self.cursor += cfg.prompts_per_step
            mine = [self.prompts[i] for i in process_share(ids, self.rank, self.world)]
            overlap = not cfg.dynamic_sampling  # with filtering, log-probs are for kept groups only
            last = self._sample_round(mine, derived_seed(self.seed, step, rounds, self.rank), models, timings,
                                      with_logprobs=overlap)
            rounds += 1
            sampled += len(mine)
            generated += sum(len(t) for t in last.response_ids)
            flat = constant_groups(last.rewards, last.group_size)
            constant += int(flat.sum())
            if not cfg.dynamic_sampling:
                parts.append(last)
                break
            keep = (~flat).nonzero().flatten().tolist()[: max(want - kept, 0)]
            if keep:
                parts.append(last.select_groups(keep))
                kept += len(keep)
            if kept >= want or rounds >= cfg.max_sampling_rounds:
                break
        if not parts:  # no informative group in any round: train on the last one (zero advantages)
            parts = [last]
        rollouts = ScoredRollouts.concat(parts)
        if cfg.dynamic_sampling:
            self._add_logprobs(rollouts, models, timings)
        fields = self.algorithm.sample_fields(rollouts, models)
        samples = to_samples(rollouts, fields, mask_truncated=cfg.mask_truncated)
        metrics = self._metrics(rollouts, timings, generated=generated, rounds=rounds,
                                constant=constant / max(sampled, 1))
        metrics.update(getattr(self.algorithm, "batch_metrics", dict)())
        return OnlineBatch(samples, metrics)

    def _sampling(self, seed: int) -> SamplingConfig:
        cfg = self.cfg
        return SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                              top_k=cfg.top_k, stop_token_ids=self.stop_token_ids, seed=seed)

    def _sample_round(self, prompts: list[Prompt], seed: int, models, timings: dict, *,
                      with_logprobs: bool) -> ScoredRollouts:
        cfg = self.cfg
        G = cfg.samples_per_prompt
        t0 = time.perf_counter()
        self.engine.wake()
        out = generate_checked(self.engine, [p.token_ids for p in prompts], G, self._sampling(seed))
        self.engine.sleep()
        timings["generate_s"] += time.perf_counter() - t0
        if len(out) != len(prompts) * G or out.prompt_index != [i for i in range(len(prompts)) for _ in range(G)]:
            raise RuntimeError(f"the engine returned {len(out)} samples, not {G} per prompt in prompt order")
        rows = [prompts[i].score_row(text) for i, text in zip(out.prompt_index, out.texts)]
        future = self.scorer.submit(rows, weights=cfg.verifier_weights, multiplier=cfg.reward_multiplier)
        rollouts = ScoredRollouts(
            prompts=list(prompts), group_size=G, response_ids=out.token_ids, texts=out.texts,
            engine_logprobs=[torch.tensor(lp, dtype=torch.float32) for lp in out.logprobs],
            finish_reasons=list(out.finish_reasons), scores=torch.zeros(0), rewards=torch.zeros(0),
            stopped=stopped_mask(out.finish_reasons))
        if with_logprobs:  # while the verifiers score
            self._add_logprobs(rollouts, models, timings)
        t1 = time.perf_counter()
        results = future.result()
        timings["score_wait_s"] += time.perf_counter() - t1
        self._failures += (results.n_errors, results.n_timeouts, results.n_crashes)
        rollouts.scores = sequence_rewards(results)
        rollouts.rewards = apply_non_stop_penalty(rollouts.scores, rollouts.stopped, cfg.non_stop_penalty)
        return rollouts

    def _add_logprobs(self, rollouts: ScoredRollouts, models, timings: dict) -> None:
        prompts, responses = rollouts.prompt_ids, rollouts.response_ids
        if self.reference is not None:
            t = time.perf_counter()
            rollouts.ref_logprobs = self.reference(models, prompts, responses)
            timings["reference_s"] += time.perf_counter() - t
        if self.old_logprobs is not None:
            t = time.perf_counter()
            rollouts.old_logprobs = self.old_logprobs(models, prompts, responses)
            timings["old_logprobs_s"] += time.perf_counter() - t

    # ------------------------------------------------------------------ metrics
    def _metrics(self, r: ScoredRollouts, timings: dict, *, generated: int, rounds: int, constant: float) -> dict:
        cfg = self.cfg
        lengths = torch.tensor([len(t) for t in r.response_ids], dtype=torch.float32)
        full = cfg.reward_multiplier * (1 - 1e-6)  # a response is correct when fully satisfied
        m = {
            "reward/mean": float(r.rewards.mean()),
            "reward/std": float(r.rewards.std()) if len(r) > 1 else 0.0,
            "reward/verifier_mean": float(r.scores.mean()),
            "length/mean": float(lengths.mean()),
            "length/max": float(lengths.max()),
            "length/truncated_frac": float((~r.stopped).float().mean()),
            "accuracy/all": float((r.scores >= full).float().mean()),
            # groups whose rewards were all equal (zero advantage): dropped with dynamic sampling
            "sampling/constant_group_frac": constant,
            "sampling/dropped_group_frac": constant if cfg.dynamic_sampling else 0.0,
            "sampling/rounds": float(rounds),
            "rollout/tokens": float(generated),
            "rollout/tokens_per_s": generated / max(timings["generate_s"], 1e-9),
            **{f"time/{k}": v for k, v in timings.items()},
        }
        per: dict[str, list[bool]] = {}
        for names, score in zip(r.datasets, r.scores.tolist()):
            for name in names if isinstance(names, list) else [names]:
                per.setdefault(name.lower(), []).append(score >= full)
        for name in self.verifier_names:  # the same keys every step (NaN when absent)
            hits = per.get(name)
            m[f"accuracy/{name}"] = sum(hits) / len(hits) if hits else math.nan
        failures = self._failures
        m.update({"verifier/errors": float(failures[0]), "verifier/timeouts": float(failures[1]),
                  "verifier/crashes": float(failures[2])})
        self._failures = np.zeros(3)
        return m
