"""Reinforcement-learning math as pure functions of batched, padded tensors: rewards from
verifier scores (``rewards``), advantage estimators by name (``advantages``: ``grpo``,
``rloo``, ``gae``), rollout correction for engine/trainer mismatch (``correction``),
DAPO's dynamic sampling (``dynamic_sampling``), masked reductions and mergeable metrics
(``stats``), and scalar-head models for reward and value (``value_model``). The policy,
KL, value and reward-model losses are in ``posttrain.losses``. Nothing here imports
``posttrain.losses``; the losses import ``stats``."""
