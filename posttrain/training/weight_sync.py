"""The trained policy's full weights to a rollout engine after each update, from any
launch: one process, DDP, or parameters sharded by FSDP2/DeepSpeed.

``FullWeightSync`` provides the online driver's ``after_update`` / ``after_resume`` hooks
(``OnlineTrainer``). Sharded, every process takes part in gathering the full weights
(``StepEngine.full_state_dict``); they then go to the engine of every process
(``every_process=True``: an engine per process, e.g. an ``hf`` engine holding its own
copy, or one vLLM engine per GPU) or to the main process's engine only (one engine for
all: the ``vllm_server`` engine; the other processes wait until the main one has pushed,
so none samples from the old weights). Not sharded, each process's own model is already
whole: a LoRA model's weights come merged (``posttrain.rollout.policy_weights``), with
nothing gathered.
An engine that samples from the trained model object itself (``shares_weights``: the
``hf`` engine given ``model=``) needs no sync; sharded parameters cannot be shared that
way (each process holds only a shard), so such runs must give the engine its own copy.
"""

from __future__ import annotations

import logging
import time

from posttrain.errors import PosttrainError

log = logging.getLogger(__name__)


class FullWeightSync:
    """Hooks that push model ``name``'s full weights to ``rollout_engine`` (module
    docstring). ``bind(step_engine)`` once the trainer exists (its hooks are built before
    it). ``seconds`` and ``syncs`` add up the time spent."""

    def __init__(self, rollout_engine, name: str = "policy", *, every_process: bool = True):
        self.rollout_engine, self.name, self.every_process = rollout_engine, name, every_process
        self.step_engine = None
        self.seconds, self.syncs = 0.0, 0

    def bind(self, step_engine) -> "FullWeightSync":
        if getattr(self.rollout_engine, "shares_weights", False) and step_engine.sharded:
            raise PosttrainError("a rollout engine that shares the trainer's model cannot sample from sharded "
                                 "parameters (FSDP/DeepSpeed): give it its own copy of the weights")
        self.step_engine = step_engine
        return self

    def sync(self) -> None:
        if self.step_engine is None:
            raise RuntimeError("FullWeightSync.bind(step_engine) was not called")
        if getattr(self.rollout_engine, "shares_weights", False):
            return  # samples from the trained model object itself
        from posttrain.rollout import policy_weights

        t = time.perf_counter()
        se = self.step_engine
        receives = self.every_process or se.is_main_process
        if se.sharded:
            weights = se.full_state_dict(self.name, everywhere=self.every_process)  # collective
            named = weights.items()
        else:
            named = policy_weights(se.models[self.name].model)  # LoRA merged, nothing gathered
        if receives and self.rollout_engine is not None:
            self.rollout_engine.wake()
            self.rollout_engine.update_weights(named)
        if not self.every_process and se.acc.num_processes > 1:
            # One engine for all (a server): no process may sample for the next step before
            # the main process has pushed these weights.
            se.acc.wait_for_everyone()
        self.seconds += time.perf_counter() - t
        self.syncs += 1

    def after_update(self, event) -> None:
        if event.last_in_batch:
            self.sync()

    def after_resume(self, step: int) -> None:
        self.sync()
