"""The pure pieces around the engines: the mismatch numbers, cutting at a stop token,
the log-prob temperature, request checks and the engine factory's errors."""

from __future__ import annotations

import pytest
import torch

from posttrain.errors import PosttrainError
from posttrain.rollout import SamplingConfig, logprob_mismatch, logprob_temperature, make_engine
from posttrain.rollout.common import check_request, cut_at_stop, longest_first


def test_mismatch_hand_computed():
    engine = [[-1.0, -2.0], [-0.5]]
    trainer = [torch.tensor([-1.5, -2.0]), [-0.25]]
    m = logprob_mismatch(engine, trainer)
    # |diffs| = 0.5, 0.0, 0.25 -> mean 0.75 / 3 = 0.25, max 0.5, over 3 tokens
    assert (m.mean, m.max, m.tokens) == (0.25, 0.5, 3)
    assert m.metrics("rl/lp") == {"rl/lp_mean": 0.25, "rl/lp_max": 0.5}
    assert logprob_mismatch([[]], [[]]).tokens == 0
    with pytest.raises(ValueError, match="sample 1"):
        logprob_mismatch(engine, [[-1.0, -2.0], [-0.5, -1.0]])
    with pytest.raises(ValueError, match="2 engine samples vs 1"):
        logprob_mismatch(engine, trainer[:1])


def test_cut_at_stop():
    assert cut_at_stop([5, 7, 0, 9, 0], (0,)) == ([5, 7, 0], "stop")
    assert cut_at_stop([5, 7, 9], (0, 1)) == ([5, 7, 9], "length")
    assert cut_at_stop([1], (0, 1)) == ([1], "stop")
    assert cut_at_stop([5, 0], ()) == ([5, 0], "length")


def test_logprob_temperature_and_order():
    assert logprob_temperature(SamplingConfig(temperature=0.0)) == 1.0
    assert logprob_temperature(SamplingConfig(temperature=0.7)) == 0.7
    assert longest_first([[1], [1, 2, 3], [4, 5, 6], [7, 8]]) == [1, 2, 3, 0]


@pytest.mark.parametrize("bad, message", [
    (dict(n=0), "n must be"), (dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_k=-1), "top_k"), (dict(prompts=[[1], []]), "prompt 1 is empty"),
])
def test_bad_requests_fail_before_any_work(bad, message):
    n = bad.pop("n", 1)
    prompts = bad.pop("prompts", [[1, 2]])
    with pytest.raises(ValueError, match=message):
        check_request(prompts, n, SamplingConfig(**bad))


def test_factory_errors():
    with pytest.raises(PosttrainError, match="unknown rollout engine 'sglang'"):
        make_engine("sglang", "x", None)
    with pytest.raises(PosttrainError, match="not model="):
        make_engine("vllm", "x", None, model=torch.nn.Linear(1, 1))
