"""Metrics sinks: a JSONL file per stage (always), TensorBoard and W&B when a recipe asks.

Each JSONL line is ``{"step": N, "time": unix_seconds, <name>: <number>, ...}``, so a
stage's curve is ``pandas.read_json(path, lines=True).plot(x="step")``. Lines are flushed
as written: a killed run keeps every line it logged. A resumed run appends."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricsWriter:
    def __init__(self, path: str | Path, *, tensorboard: bool = False, wandb: bool = False,
                 wandb_project: str = "posttrain", run_name: str | None = None, config: dict | None = None,
                 enabled: bool = True):
        self.path = Path(path)
        self._file = None
        self._tb = None
        self._wandb = None
        if not enabled:  # a non-main process of a distributed run logs nothing
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))
        if wandb:
            import wandb as _wandb

            self._wandb = _wandb.init(project=wandb_project, name=run_name, config=config, reinit=True)

    def log(self, step: int, **values: Any) -> None:
        if self._file is None:
            return
        clean = {k: _plain(v) for k, v in values.items()}
        self._file.write(json.dumps({"step": step, "time": round(time.time(), 3), **clean}) + "\n")
        numeric = {k: v for k, v in clean.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _plain(v: Any) -> Any:
    """Tensors and numpy scalars to Python numbers; NaN/inf to strings JSON can hold."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(path: str | Path) -> list[dict]:
    """The lines of a metrics JSONL file, skipping a torn last line left by a kill."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
