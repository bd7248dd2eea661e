"""The ``hf`` engine's lean sampling loop (``posttrain/rollout/kv_sampling.py``) against
transformers' ``generate`` (the engine's fallback, ``lean=False``) on the real tiny
OLMo-2: the same samples and log-probs for the same seed, each prompt prefilled once."""

from __future__ import annotations

import pytest
import torch

from posttrain.rollout import SamplingConfig, make_engine
from posttrain.rollout.kv_sampling import can_sample_with_cache, group_runs
from rollout_helpers import PROMPTS


def test_group_runs_hand_computed():
    assert group_runs([3, 3, 1, 1, 1]) == ([3, 1], [2, 3])
    assert group_runs([0]) == ([0], [1])
    assert group_runs([2, 0, 2]) == ([2, 0, 2], [1, 1, 1])  # only neighbours are merged
    assert group_runs([]) == ([], [])


def test_the_tiny_olmo2_takes_the_lean_loop(trainer):
    assert can_sample_with_cache(trainer.model)
    assert make_engine("hf", None, trainer.tokenizer, model=trainer.model).lean
    assert not make_engine("hf", None, trainer.tokenizer, model=trainer.model, lean=False).lean


@pytest.mark.parametrize("sampling", [
    SamplingConfig(max_new_tokens=12, temperature=1.0, seed=7),
    SamplingConfig(max_new_tokens=12, temperature=0.7, top_k=20, top_p=0.9, seed=8),
    SamplingConfig(max_new_tokens=12, temperature=0.0),
    # half the vocabulary stops a sample: rows finish at different steps
    SamplingConfig(max_new_tokens=12, temperature=1.0, stop_token_ids=tuple(range(0, 512, 2)), seed=9),
], ids=["plain", "top_k_top_p", "greedy", "stops"])
@pytest.mark.parametrize("batch_size", [64, 4])  # 4 splits the groups of 3 across batches
def test_lean_loop_samples_what_generate_samples(trainer, sampling, batch_size):
    lean = make_engine("hf", None, trainer.tokenizer, model=trainer.model, batch_size=batch_size)
    plain = make_engine("hf", None, trainer.tokenizer, model=trainer.model, batch_size=batch_size, lean=False)
    a, b = lean.generate(PROMPTS, 3, sampling), plain.generate(PROMPTS, 3, sampling)
    assert a.token_ids == b.token_ids
    assert a.finish_reasons == b.finish_reasons and a.texts == b.texts
    for x, y in zip(a.logprobs, b.logprobs):
        torch.testing.assert_close(torch.tensor(x), torch.tensor(y), atol=1e-5, rtol=0)
    if sampling.stop_token_ids:
        assert "stop" in a.finish_reasons


def test_each_prompt_is_prefilled_once(trainer):
    rows: list[tuple[int, int]] = []
    hook = trainer.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        engine = make_engine("hf", None, trainer.tokenizer, model=trainer.model)
        engine.generate(PROMPTS, 4, SamplingConfig(max_new_tokens=5, temperature=1.0, seed=1))
    finally:
        hook.remove()
    longest = max(len(p) for p in PROMPTS)
    # one prefill of the 3 prompts, then one token for each of the 12 rows per step
    assert rows == [(3, longest)] + [(12, 1)] * 4


def test_lean_loop_through_a_lora_wrapper(tiny_model_dir):
    from posttrain.policy import LoraSettings, Policy
    from rollout_helpers import optimizer_step

    lora = Policy.load(tiny_model_dir, device="cpu", lora=LoraSettings(r=4, alpha=8))
    optimizer_step(lora, lr=1e-2)  # adapters away from zero: the wrapper's forward matters
    lean = make_engine("hf", None, lora.tokenizer, model=lora.model)
    assert lean.lean
    sampling = SamplingConfig(max_new_tokens=10, temperature=1.0, seed=3)
    a = lean.generate(PROMPTS, 3, sampling)
    b = make_engine("hf", None, lora.tokenizer, model=lora.model, lean=False).generate(PROMPTS, 3, sampling)
    assert a.token_ids == b.token_ids
    torch.testing.assert_close(torch.tensor(sum(a.logprobs, [])), torch.tensor(sum(b.logprobs, [])), atol=1e-5,
                               rtol=0)
