"""The shared training loop (``loop.Trainer``), resumable checkpoints (``checkpoint``) and
batching: plans, padding collate and packing (``batching``)."""

from posttrain.training.loop import LossOutput, Trainer, get_accelerator, set_seed

__all__ = ["LossOutput", "Trainer", "get_accelerator", "set_seed"]
