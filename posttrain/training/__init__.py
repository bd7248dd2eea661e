"""Training: the step engine (``engine.StepEngine``: prepare, accumulate, clip, step,
checkpoint) and its drivers, ``loop.Trainer`` (a fixed data set: SFT, DPO) and
``online.OnlineTrainer`` (batches produced after each update: RL); the process's
accelerator and precision (``accelerator``, ``precision``); resumable checkpoints
(``checkpoint``); batching: plans, padding collate and packing (``batching``)."""

from posttrain.training.accelerator import get_accelerator, set_seed
from posttrain.training.engine import LossOutput, OptimizerSettings, StepEngine, StepResult
from posttrain.training.loop import Trainer
from posttrain.training.online import OnlineBatch, OnlineModel, OnlineTrainer, UpdateEvent

__all__ = ["LossOutput", "OnlineBatch", "OnlineModel", "OnlineTrainer", "OptimizerSettings", "StepEngine",
           "StepResult", "Trainer", "UpdateEvent", "get_accelerator", "set_seed"]
