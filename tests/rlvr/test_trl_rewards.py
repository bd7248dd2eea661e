"""Registered verifiers as TRL ``GRPOTrainer`` reward functions
(``posttrain.verifiers.trl_rewards``): the values by hand, ``None`` for other verifiers'
rows, conversational completions, then inside a real ``GRPOTrainer`` step on the tiny
OLMo-2 (fp32, no gradient checkpointing, set explicitly: TRL defaults to bf16 and
checkpointing)."""

from __future__ import annotations

import pytest
import torch

from posttrain.verifiers import register_verifier
from posttrain.verifiers.trl_rewards import verifier_reward


@register_verifier("test_even_len")
def _even_len(response, ground_truth, prompt=None):
    return float(len(response) % int(ground_truth) == 0)


def test_values_by_hand_and_none_for_other_verifiers():
    prompts = ["What is 2 + 2?", "What is 3 + 4?", "Say hi"]
    completions = ["2 + 2 = 4.\n#### 4", "3 + 4 = 8.\n#### 8", "hi!"]
    columns = {"dataset": ["gsm8k", "gsm8k", "test_even_len"], "ground_truth": ["4", "7", 2]}
    # each row's own verifier: right, wrong, odd length (3 characters)
    assert verifier_reward()(prompts, completions, **columns) == [1.0, 0.0, 0.0]
    # one verifier for every row it applies to; None elsewhere, so TRL sums the others
    gsm8k = verifier_reward("gsm8k", multiplier=10.0)
    assert gsm8k(prompts, completions, **columns) == [10.0, 0.0, None]
    assert gsm8k.__name__ == "gsm8k_reward" and verifier_reward().__name__ == "verifier_reward"
    even = verifier_reward("test_even_len")
    assert even(prompts, ["ab", "abc", "abcd"], **columns) == [None, None, 1.0]
    # a data set without a dataset column: every row is the named verifier's
    assert even(None, ["ab", "abc"], ground_truth=[2, 2]) == [1.0, 0.0]
    # in a pool of worker processes (timeouts, crash protection): the same values
    assert verifier_reward("gsm8k", workers=1)(prompts, completions, **columns) == [1.0, 0.0, None]


def test_conversational_completions_and_several_verifiers_per_row():
    completions = [[{"role": "assistant", "content": "#### 12"}], [{"role": "assistant", "content": "#### 13"}]]
    prompts = [[{"role": "user", "content": "6 + 6?"}]] * 2
    columns = {"dataset": [["gsm8k", "test_even_len"]] * 2, "ground_truth": [["12", 7], ["12", 7]]}
    # weighted mean of the row's verifiers: gsm8k (1, 0) and length % 7 == 0 ("#### 12" has 7 characters)
    assert verifier_reward(weights={"gsm8k": 3.0})(prompts, completions, **columns) == [1.0, 0.75 * 0 + 0.25 * 1]
    assert verifier_reward("test_even_len")(prompts, completions, **columns) == [1.0, 1.0]


def test_bad_use_fails_at_once():
    with pytest.raises(ValueError, match="no_such_verifier"):
        verifier_reward("no_such_verifier")
    with pytest.raises(ValueError, match="ground_truth"):
        verifier_reward()(["p"], ["c"], dataset=["gsm8k"])


def test_inside_a_real_grpo_trainer_step(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.policy import prepare_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prepare_tokenizer(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + 1?"}], "dataset": "test_even_len",
             "ground_truth": 3} for i in range(4)]
    seen = []
    reward = verifier_reward()

    def recorded(prompts, completions, completion_ids, **columns):
        out = reward(prompts, completions, completion_ids, **columns)
        seen.append(([c[-1]["content"] for c in completions], columns["ground_truth"], out))
        return out

    recorded.__name__ = reward.__name__
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, fp16=False,
                      gradient_checkpointing=False, num_generations=4, per_device_train_batch_size=4,
                      max_completion_length=8, max_steps=1, learning_rate=1e-2, beta=0.0, temperature=1.0,
                      report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[recorded], args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer)
    trainer.train()
    assert len(seen) == 1
    texts, truths, scores = seen[0]
    assert len(texts) == 4 and truths == [3] * 4
    assert scores == [float(len(t) % 3 == 0) for t in texts]
    logged = trainer.state.log_history[0]
    assert logged["rewards/verifier_reward/mean"] == pytest.approx(sum(scores) / 4)
    assert len(set(scores)) > 1  # mixed rewards (seed 0): a real policy-gradient step moved the weights
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
