"""The RLVR stage (``type: rlvr``): reinforcement learning with verifiable rewards.

Modules, one idea each: ``config`` (the recipe section), ``algorithm`` (the seam an RL
algorithm plugs into) and ``grpo`` (GRPO), ``source`` (each step's rollouts: prompts,
sampling, scoring, rewards, dynamic sampling), ``rollouts`` (scored rollouts and
training samples), ``batch`` (samples -> micro-batches), ``loss`` (the policy's loss),
``engines`` (the rollout engine and weight sync), ``evaluation`` (the in-loop eval) and
``runner`` (the stage: wiring only)."""

from posttrain.stages.rlvr.config import RLVRConfig
from posttrain.stages.rlvr.runner import run_rlvr

__all__ = ["RLVRConfig", "run_rlvr"]
