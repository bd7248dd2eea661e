"""Stage runners: each is a short wiring of data, loss, optimizer step, checkpoint and
metrics. Importing this package registers every built-in stage."""

from posttrain.stages.registry import get_stage, register_stage, stage_names
from posttrain.stages import sft  # noqa: F401,E402  (registers "sft")
from posttrain.stages import dpo  # noqa: F401,E402  (registers "dpo")
from posttrain.stages import pairs  # noqa: F401,E402  (registers "pairs")
from posttrain.stages import rm  # noqa: F401,E402  (registers "rm")
from posttrain.stages import rlvr  # noqa: F401,E402  (registers "rlvr")
from posttrain.stages import soup  # noqa: F401,E402  (registers "soup")

__all__ = ["get_stage", "register_stage", "stage_names"]
