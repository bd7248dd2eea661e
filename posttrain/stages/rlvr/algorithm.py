"""The seam between the RLVR stage's shared machinery and an RL algorithm.

Everything up to scored rollouts is the same for every algorithm: prompts, sampling with
a rollout engine, verifier rewards, the non-stop penalty, reference and old log-probs,
dynamic sampling (``source.py``), micro-batch collation (``batch.py``), the weight sync,
checkpoints and the in-loop eval (``runner.py``). An algorithm adds what differs:

- ``online_models``: the models it trains, each with its loss (GRPO: the policy with the
  policy loss; PPO: the policy and a value model);
- ``sample_fields``: per-sample, per-token tensors computed from the scored rollouts
  before the update (GRPO: group-relative advantages; PPO: values, GAE advantages and
  returns), which the collate pads into ``(B, T)`` tensors under the same names.

An algorithm registers with ``@register_algorithm("name")``; ``algorithm: name`` in a
recipe picks it: ``grpo`` (``grpo.py``) and ``ppo`` (``ppo.py``). An algorithm may also
have ``batch_metrics() -> dict``: statistics of its last ``sample_fields``, logged with the
step's metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

if TYPE_CHECKING:
    import torch

    from posttrain.stages.rlvr.rollouts import ScoredRollouts
    from posttrain.training import OnlineModel


class Algorithm(Protocol):
    """What an RL algorithm provides to the RLVR stage (module docstring)."""

    def online_models(self, policy) -> list["OnlineModel"]:
        """The trained models, the policy first (its folder is the stage's output)."""
        ...

    def frozen_models(self) -> dict[str, Any]:
        """Inference-only models the algorithm needs in ``produce`` besides the
        reference (e.g. none for GRPO)."""
        ...

    def sample_fields(self, rollouts: "ScoredRollouts", models: Mapping[str, Any]) -> dict[str, list["torch.Tensor"]]:
        """Per-sample ``(L_i,)`` tensors by name; ``advantages`` is required."""
        ...


AlgorithmFactory = Callable[..., Algorithm]
_ALGORITHMS: dict[str, AlgorithmFactory] = {}


def register_algorithm(name: str):
    """Decorator for a factory ``(cfg, *, pad_id, ...) -> Algorithm``."""

    def wrap(factory: AlgorithmFactory) -> AlgorithmFactory:
        _ALGORITHMS[name] = factory
        return factory

    return wrap


def _load_builtin() -> None:
    import posttrain.stages.rlvr.grpo  # noqa: F401  (registers "grpo")
    import posttrain.stages.rlvr.ppo  # noqa: F401  (registers "ppo")


def algorithm_names() -> list[str]:
    _load_builtin()
    return sorted(_ALGORITHMS)


def get_algorithm(name: str) -> AlgorithmFactory:
    _load_builtin()
    try:
        return _ALGORITHMS[name]
    except KeyError:
        raise KeyError(f"unknown RL algorithm {name!r} (known: {', '.join(sorted(_ALGORITHMS))})") from None
