"""The RLVR section's defaults are OLMo 2 1B Instruct's GRPO settings (open-instruct
``docs/olmo2.md`` / ``grpo_fast.py``), each documented in its field's docstring."""

from __future__ import annotations

from posttrain.recipe.load import validate_recipe
from posttrain.stages.rlvr.config import RLVRConfig

OLMO2_1B_GRPO = {"algorithm": "grpo", "beta": 0.01, "kl_estimator": "k3", "learning_rate": 5e-7,
                 "lr_scheduler": "constant", "warmup_ratio": 0.0, "samples_per_prompt": 16, "prompts_per_step": 48,
                 "max_new_tokens": 2048, "max_length": 2048, "temperature": 1.0, "top_p": 1.0, "num_iterations": 1,
                 "num_minibatches": 1, "reward_multiplier": 10.0, "advantage": "grpo", "scale_rewards": "group",
                 "loss_aggregation": "token_mean", "clip_low": 0.2, "clip_high": 0.2}


def test_defaults_are_olmo2_1b_grpo():
    cfg = validate_recipe({"output_dir": "/tmp/unused", "stages": {"rlvr": {"train_data": [{"path": "a/b"}]}}}
                          ).stages["rlvr"]
    assert {k: getattr(cfg, k) for k in OLMO2_1B_GRPO} == OLMO2_1B_GRPO


def test_every_field_is_documented():
    undocumented = [name for name, f in RLVRConfig.model_fields.items() if not (f.description or "").strip()]
    assert not undocumented, undocumented
