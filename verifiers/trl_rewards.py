"""Any registered verifier as a TRL ``GRPOTrainer`` reward function.

TRL calls each reward function with the step's prompts and completions and every other
column of the data set as a keyword argument (one value per completion), and takes back
one float per completion, or ``None`` where the function does not apply (TRL then leaves
it out of that completion's reward)::

    from trl import GRPOConfig, GRPOTrainer
    from posttrain.verifiers.trl_rewards import verifier_reward

    # rows: {"prompt": ..., "dataset": "gsm8k", "ground_truth": "42"}, as RLVR data holds them
    trainer = GRPOTrainer(model, reward_funcs=[verifier_reward()], train_dataset=rows, args=GRPOConfig(...))

``verifier_reward()`` scores each completion with the verifier(s) its row names in the
``dataset`` column against ``ground_truth`` (several names: their weighted mean, as
``posttrain verify``). ``verifier_reward("math")`` scores every row with one verifier,
and returns ``None`` for rows whose ``dataset`` column names other verifiers, so one
function per verifier can be passed to TRL side by side, each logged under its own name
(``math_reward``). Conversational completions (lists of messages) are scored on their
last message's text; the prompt's last message is the verifier's ``prompt``.

Verifiers run in this process by default (``workers=0``: no process start, fast for
``gsm8k``/``math``/``ifeval``); a verifier that raises scores 0 with the error counted,
never a crashed step. ``workers=N`` scores in a pool of N worker processes with the
per-call ``timeout`` and crash protection of :class:`posttrain.verifiers.Scorer`, which
the ``code`` verifier should use. TRL itself is not imported here.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from .registry import get_verifier
from .scoring import DEFAULT_TIMEOUT, Scorer

log = logging.getLogger(__name__)

RewardFunc = Callable[..., list]


def _text(x: Any) -> str:
    """A completion or prompt as text: a string, or the last message of a conversation."""
    if isinstance(x, str):
        return x
    if isinstance(x, dict):
        return str(x.get("content", ""))
    if isinstance(x, (list, tuple)) and x:
        return _text(x[-1])
    return ""


def _names(dataset: Any) -> list[str]:
    if isinstance(dataset, str):
        return [dataset]
    if isinstance(dataset, (list, tuple)):
        return [str(d) for d in dataset]
    return []


def verifier_reward(verifier: str | None = None, *, dataset_column: str = "dataset",
                    ground_truth_column: str = "ground_truth", weights: dict[str, float] | None = None,
                    multiplier: float = 1.0, reasoning_format: bool = True, workers: int = 0,
                    timeout: float = DEFAULT_TIMEOUT) -> RewardFunc:
    """A TRL reward function (module docstring). ``verifier``: one verifier for every
    row (``None`` for rows naming others), or ``None`` to use each row's own
    ``dataset_column``. The score (in [0, 1]) is multiplied by ``multiplier``."""
    if verifier is not None:
        get_verifier(verifier)  # an unknown name fails here, not in the middle of training
    scorer: Scorer | None = None

    def reward(prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (),
               completion_ids: Sequence[Any] | None = None, **columns: Any) -> list[float | None]:
        nonlocal scorer
        n = len(completions)
        truths = columns.get(ground_truth_column)
        if truths is None:
            raise ValueError(f"verifier reward: the data set needs a {ground_truth_column!r} column")
        sets = columns.get(dataset_column)
        if verifier is None and sets is None:
            raise ValueError(f"verifier reward: the data set needs a {dataset_column!r} column naming each row's "
                             "verifier (or pass the verifier's name)")
        rows, where = [], []
        for i in range(n):
            names = _names(sets[i]) if sets is not None else []
            if verifier is not None:
                if names and verifier.lower() not in (x.lower() for x in names):
                    continue  # another verifier's row: None
                truth = truths[i]
                if len(names) > 1:  # this verifier's own ground truth of a multi-verifier row
                    truth = truths[i][[x.lower() for x in names].index(verifier.lower())]
                dataset = verifier
            else:
                dataset, truth = sets[i], truths[i]
            rows.append({"response": _text(completions[i]), "dataset": dataset, "ground_truth": truth,
                         "prompt": _text(prompts[i]) if prompts is not None else None})
            where.append(i)
        out: list[float | None] = [None] * n
        if rows:
            if scorer is None:
                scorer = Scorer(workers=workers, timeout=timeout, reasoning_format=reasoning_format)
            results = scorer.score(rows, weights=weights, multiplier=multiplier)
            if results.n_failed:
                log.warning("verifier reward: %d calls failed (scored 0): %d errors, %d timeouts, %d crashes",
                            results.n_failed, results.n_errors, results.n_timeouts, results.n_crashes)
            for i, r in zip(where, results):
                out[i] = float(r.score)
        return out

    reward.__name__ = f"{verifier}_reward" if verifier else "verifier_reward"
    reward.__qualname__ = reward.__name__
    return reward
