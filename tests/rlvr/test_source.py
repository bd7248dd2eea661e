"""Each step's batch (``posttrain.stages.rlvr.source``): the prompt stream and process
shares by hand, GRPO's group advantages by hand, and the source itself on the real tiny
OLMo-2 with the ``hf`` engine and real verifier scoring: groups stay whole, rewards and
advantages line up with the responses, dynamic sampling keeps only informative groups,
and the same step from the same state gives the same batch (what exact resume needs)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from posttrain.data.prompts import build_prompts, step_prompts, stream_prompts
from posttrain.recipe.load import validate_recipe
from posttrain.stages.rlvr.grpo import GRPO, group_advantages
from posttrain.stages.rlvr.source import RolloutSource, derived_seed, process_share
from posttrain.verifiers import Scorer, register_verifier


@register_verifier("test_len_mod")
def _len_mod(response, ground_truth, prompt=None):
    """1 when the response's length is a multiple of the ground truth: always for 1."""
    return float(len(response) % int(ground_truth) == 0)


def test_prompt_stream_by_hand():
    perm0 = np.random.default_rng([7, 0]).permutation(5).tolist()
    perm1 = np.random.default_rng([7, 1]).permutation(5).tolist()
    assert stream_prompts(5, 3, 4, seed=7) == perm0[3:5] + perm1[0:2]  # wraps into epoch 1
    assert stream_prompts(5, 0, 12, seed=7) == perm0 + perm1 + np.random.default_rng([7, 2]).permutation(5).tolist()[:2]
    assert step_prompts(5, 4, 1, seed=7) == stream_prompts(5, 4, 4, seed=7)


def test_process_shares_are_whole_and_cover_everything():
    assert process_share(list(range(5)), 0, 2) == [0, 1] and process_share(list(range(5)), 1, 2) == [2, 3, 4]
    assert process_share(list(range(4)), 0, 1) == [0, 1, 2, 3]
    assert derived_seed(0, 3, 1) == derived_seed(0, 3, 1) != derived_seed(0, 3, 2)


def test_group_advantages_by_hand():
    r = torch.tensor([10.0, 0, 0, 0, 10, 10, 0, 0])
    # group 1: mean 2.5, std (Bessel) sqrt((7.5^2 + 3 x 2.5^2) / 3) = 5
    # group 2: mean 5, std sqrt(4 x 25 / 3) = 5.7735
    s2 = math.sqrt(100 / 3)
    expected = [7.5 / (5 + 1e-4)] + [-2.5 / (5 + 1e-4)] * 3 + [5 / (s2 + 1e-4)] * 2 + [-5 / (s2 + 1e-4)] * 2
    assert torch.allclose(group_advantages(r, 4, "grpo", "group"), torch.tensor(expected), atol=1e-6)
    assert torch.allclose(group_advantages(r, 4, "grpo", "none"), torch.tensor([7.5, -2.5, -2.5, -2.5, 5, 5, -5, -5]))
    # batch: the std of all 8 rewards (mean 3.75; squares 39.0625 x 3 + 14.0625 x 5 = 187.5; / 7)
    sb = math.sqrt(187.5 / 7)
    assert torch.allclose(group_advantages(r, 4, "grpo", "batch"),
                          torch.tensor([7.5, -2.5, -2.5, -2.5, 5, 5, -5, -5]) / (sb + 1e-4), atol=1e-6)
    # another process's rewards widen the batch: its std is taken over all of them
    both = torch.cat([r, torch.zeros(8)])
    assert torch.allclose(group_advantages(r, 4, "grpo", "batch", batch_rewards=both),
                          torch.tensor([7.5, -2.5, -2.5, -2.5, 5, 5, -5, -5]) / (float(both.std()) + 1e-4), atol=1e-6)
    # rloo: reward minus the mean of the other three
    assert torch.allclose(group_advantages(r, 4, "rloo", "group"),
                          torch.tensor([10.0, -10 / 3, -10 / 3, -10 / 3, 10 - 10 / 3, 10 - 10 / 3, -20 / 3, -20 / 3]))


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    from posttrain.policy import Policy

    return Policy.load(tiny_model_dir, device="cpu", dtype="float32")


def _prompts(tmp_path, tokenizer, truths):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say {i}", "dataset": "test_len_mod", "ground_truth": t}) + "\n"
                            for i, t in enumerate(truths)))
    from posttrain.recipe.schema import DataSource

    return build_prompts([DataSource(path=str(path))], tokenizer, 64, seed=0)[0]


def _source(policy, prompts, scorer, stop=(0,), **fields):
    from posttrain.rollout import make_engine

    stage = {"train_data": [{"path": "unused/hub-name"}], "prompts_per_step": 2, "samples_per_prompt": 4,
             "max_new_tokens": 6, "reward_multiplier": 10.0, **fields}
    cfg = validate_recipe({"output_dir": "/tmp/unused", "stages": {"rlvr": stage}}).stages["rlvr"]
    engine = make_engine("hf", None, policy.tokenizer, model=policy.model)
    ref = lambda models, p, r: [torch.full((len(x),), -1.0) for x in r]  # noqa: E731
    return RolloutSource(cfg, prompts, engine, scorer, GRPO(cfg), seed=3, stop_token_ids=stop, reference=ref,
                         old_logprobs=None, verifier_names=["test_len_mod"])


@torch.no_grad()
def test_a_step_lines_up_responses_rewards_and_advantages(tmp_path, policy):
    prompts = _prompts(tmp_path, policy.tokenizer, [2] * 6)
    with Scorer(workers=0) as scorer:
        source = _source(policy, prompts, scorer)
        batch = source.produce(0, {})
    samples = batch.samples
    assert len(samples) == 8 and source.cursor == 2
    # groups whole: 4 consecutive samples per prompt, the step's prompts in stream order
    order = stream_prompts(6, 0, 2, seed=3)
    assert [s.prompt_ids for s in samples] == [prompts[i].token_ids for i in order for _ in range(4)]
    texts = policy.tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
    rewards = torch.tensor([10.0 * (len(t) % 2 == 0) for t in texts])
    adv = group_advantages(rewards, 4, "grpo", "group")
    for s, a in zip(samples, adv.tolist()):
        assert s.advantages.shape == (len(s.response_ids),) and torch.allclose(s.advantages, torch.tensor(a))
        assert s.ref_logprobs is not None and s.old_logprobs is None and s.trained
    m = batch.metrics
    assert math.isclose(m["reward/mean"], float(rewards.mean()), rel_tol=1e-6)
    assert math.isclose(m["accuracy/test_len_mod"], float((rewards == 10).float().mean()), rel_tol=1e-6)
    assert m["length/max"] == max(len(s.response_ids) for s in samples) and m["sampling/dropped_group_frac"] == 0
    flat = [len(set(rewards[i : i + 4].tolist())) == 1 for i in (0, 4)]
    assert m["sampling/constant_group_frac"] == sum(flat) / 2


@torch.no_grad()
def test_dynamic_sampling_keeps_informative_groups_and_resumes_the_same(tmp_path, policy):
    # ground truth 1: every length is a multiple: constant rewards, always dropped
    prompts = _prompts(tmp_path, policy.tokenizer, [1, 1, 1, 2, 1, 1, 2, 1])
    with Scorer(workers=0) as scorer:
        source = _source(policy, prompts, scorer, dynamic_sampling=True, max_sampling_rounds=4)
        state = source.state_dict()
        batch = source.produce(5, {})
        again = _source(policy, prompts, scorer, dynamic_sampling=True, max_sampling_rounds=4)
        again.load_state_dict(state)
        repeat = again.produce(5, {})
    m = batch.metrics
    rounds = int(m["sampling/rounds"])
    assert rounds >= 2 and source.cursor == 2 * rounds == again.cursor
    groups = [batch.samples[i : i + 4] for i in range(0, len(batch.samples), 4)]
    assert 1 <= len(groups) <= 2
    for g in groups:  # only groups with different rewards: their advantages are not all 0
        assert any(abs(float(s.advantages[0])) > 0 for s in g)
        truth = next(p.ground_truth for p in prompts if p.token_ids == g[0].prompt_ids)
        assert truth == 2
    # every sampled group of ground truth 1 was dropped, and those of ground truth 2 that came out constant
    assert m["sampling/dropped_group_frac"] >= 1 - len(groups) / (2 * rounds) - 1e-9
    assert m["sampling/dropped_group_frac"] == m["sampling/constant_group_frac"] > 0
    assert [s.response_ids for s in repeat.samples] == [s.response_ids for s in batch.samples]
    timing = [k for k in m if k.startswith("time/") or k.endswith("per_s")]
    assert {k: v for k, v in repeat.metrics.items() if k not in timing} == {k: v for k, v in m.items()
                                                                           if k not in timing}


@torch.no_grad()
def test_non_stop_penalty_and_truncated_responses_out_of_the_loss(tmp_path, policy):
    # With every id below 100 a stop token, the random tiny model stops within 6 tokens
    # about 3 times in 4 (1 - (412/512)^6): some responses stop, some hit the limit.
    prompts = _prompts(tmp_path, policy.tokenizer, [2] * 6)
    stop = tuple(range(100))
    with Scorer(workers=0) as scorer:
        plain = _source(policy, prompts, scorer, stop=stop).produce(0, {})
        fixed = _source(policy, prompts, scorer, stop=stop, non_stop_penalty=-3.0, mask_truncated=True).produce(0, {})
    # the same seed samples the same responses; only their rewards and loss membership change
    assert [s.response_ids for s in plain.samples] == [s.response_ids for s in fixed.samples]
    stopped = [s.response_ids[-1] in stop for s in fixed.samples]
    assert 0 < sum(stopped) < len(stopped), [s.response_ids for s in fixed.samples]
    texts = policy.tokenizer.batch_decode([s.response_ids for s in plain.samples], skip_special_tokens=True)
    verifier = torch.tensor([10.0 * (len(t) % 2 == 0) for t in texts])
    # the penalty replaces (does not add to) the reward of a response that did not stop
    rewards = torch.where(torch.tensor(stopped), verifier, torch.tensor(-3.0))
    assert math.isclose(fixed.metrics["reward/mean"], float(rewards.mean()), rel_tol=1e-6)
    assert math.isclose(fixed.metrics["reward/verifier_mean"], float(verifier.mean()), rel_tol=1e-6)
    assert math.isclose(fixed.metrics["length/truncated_frac"], 1 - sum(stopped) / len(stopped), rel_tol=1e-6)
    adv = group_advantages(rewards, 4, "grpo", "group")
    for s, a, done in zip(fixed.samples, adv.tolist(), stopped):
        assert torch.allclose(s.advantages, torch.tensor(a)) and s.trained == done
    assert all(s.trained for s in plain.samples)
