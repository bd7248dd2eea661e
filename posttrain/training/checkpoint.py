"""Resumable checkpoints: ``stepN-tokensM`` folders written atomically.

A checkpoint folder is a plain ``save_pretrained`` folder of the run's main model (the
policy; a LoRA policy is saved merged, with its adapter in ``adapter/``), the other
trained models in ``models/<name>/`` (e.g. PPO's value model), plus ``trainer_state/``:

- ``state.json``: step, tokens seen, the names of the trained models and their optimizer
  step counts, the world size, and the driver's position (the fixed-data driver: epoch and
  micro-batch index, the epoch's order being recreated from the seed and epoch);
- ``optimizer.pt``, ``scheduler.pt`` (main model), ``optimizer-<name>.pt``,
  ``scheduler-<name>.pt`` (each other trained model); a sharded run (FSDP2) instead
  writes each process's optimizer shard with ``torch.distributed.checkpoint`` into
  ``optimizer_shards/`` (``optimizer-<name>_shards/``) and resumes on the same world size;
- ``rng_<rank>.pt``: python, numpy, torch (and CUDA) RNG states of each process;
- ``driver_<rank>.pt``: the online driver's own state of each process (e.g. its prompt
  position), any picklable value, when it has one.

Everything is written into ``<name>.tmp`` and renamed when complete, so a kill mid-save
leaves the previous checkpoints intact; leftover ``*.tmp`` folders are removed on the next
start and never loaded. Only folders named ``stepN-tokensM`` with
``trainer_state/state.json`` count as checkpoints.

Token counts in names follow OLMo's style, rounded to the nearest unit: below 1,000 the
exact count (``tokens850``), then ``K`` (10^3), ``M`` (10^6), ``B`` (10^9), ``T`` (10^12)
with the largest unit that keeps the number >= 1 (12,345 -> ``tokens12K``, 3,456,789 ->
``tokens3M``). The step number, not the token count, orders checkpoints.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_DIR = "trainer_state"
MODELS_DIR = "models"
_NAME = re.compile(r"^step(\d+)-tokens(\d+)([KMBT]?)$")


def format_tokens(n: int) -> str:
    """``850``, ``12K``, ``3M``, ``7B``: the count rounded in its largest unit."""
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{round(n / size)}{unit}"
    return str(n)


def checkpoint_name(step: int, tokens: int) -> str:
    return f"step{step}-tokens{format_tokens(tokens)}"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest step first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m and (p / STATE_DIR / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def remove_partial(directory: str | Path) -> None:
    """Delete ``*.tmp`` folders a killed save left behind."""
    d = Path(directory)
    if d.is_dir():
        for p in d.glob("*.tmp"):
            shutil.rmtree(p, ignore_errors=True)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _optim_files(name: str, main: bool) -> tuple[str, str]:
    return ("optimizer.pt", "scheduler.pt") if main else (f"optimizer-{name}.pt", f"scheduler-{name}.pt")


def write_trainer_state(folder: Path, state: dict, optim: dict[str, tuple[Any, Any]], rank: int, rng: dict,
                        driver_state: Any = None, *, optimizers: bool = True) -> None:
    """Write this process's part of ``trainer_state/`` (rank 0 also writes the shared
    part). ``optim`` maps each trained model's name to its ``(optimizer, scheduler)``, the
    main model first. ``optimizers=False``: leave the optimizer states out (sharded runs
    write theirs per process, ``sharding.save_optimizer_shards``)."""
    sd = folder / STATE_DIR
    sd.mkdir(parents=True, exist_ok=True)
    torch.save(rng, sd / f"rng_{rank}.pt")
    if driver_state is not None:
        torch.save(driver_state, sd / f"driver_{rank}.pt")
    if rank == 0:
        for i, (name, (optimizer, scheduler)) in enumerate(optim.items()):
            opt_file, sched_file = _optim_files(name, i == 0)
            if optimizers:
                torch.save(optimizer.state_dict(), sd / opt_file)
            torch.save(scheduler.state_dict(), sd / sched_file)
        # state.json last: within the .tmp folder it completes the state.
        (sd / "state.json").write_text(json.dumps(state, indent=2) + "\n")


@dataclass
class SavedState:
    """A checkpoint's ``trainer_state/`` as this process reads it."""

    state: dict
    optimizers: dict[str, dict]
    schedulers: dict[str, dict]
    rng: dict
    driver_state: Any


def read_trainer_state(folder: Path, rank: int, names: list[str], *, optimizers: bool = True) -> SavedState:
    """The trainer state of a checkpoint for this process; ``names``: the trained models,
    the main one first. ``optimizers=False``: do not read optimizer files (sharded runs
    read their shards themselves)."""
    sd = folder / STATE_DIR
    state = json.loads((sd / "state.json").read_text())
    saved = state.get("models", names[:1])
    if list(saved) != list(names):
        raise ValueError(f"{folder}: the checkpoint trained models {saved}, this run trains {names}")
    # Our own files: the RNG states hold numpy and Python tuples, which weights_only refuses.
    optims, schedulers = {}, {}
    for i, name in enumerate(names):
        opt_file, sched_file = _optim_files(name, i == 0)
        if optimizers and (sd / opt_file).exists():
            optims[name] = torch.load(sd / opt_file, map_location="cpu", weights_only=False)
        schedulers[name] = torch.load(sd / sched_file, weights_only=False)
    rng_file = sd / f"rng_{rank}.pt"
    rng = torch.load(rng_file if rng_file.exists() else sd / "rng_0.pt", weights_only=False)
    driver_file = sd / f"driver_{rank}.pt"
    driver = torch.load(driver_file, weights_only=False) if driver_file.exists() else None
    return SavedState(state, optims, schedulers, rng, driver)


def load_weights(model, folder: Path) -> None:
    """Load a checkpoint's trainable weights into ``model`` in place: the adapter for a
    peft model, else every ``*.safetensors`` shard of the folder."""
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter" / "adapter_model.safetensors")))
        return
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights to resume from")
    sd = {}
    for shard in shards:
        sd.update(load_file(str(shard)))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"{folder}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def prune(directory: Path, keep_last: int) -> None:
    for old in list_checkpoints(directory)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def atomic_dir(final: Path) -> Path:
    """A fresh ``<final>.tmp`` folder to write into before ``commit_dir``."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: Path) -> None:
    """Replace ``final`` by the completed ``tmp``. Where ``final`` already exists it is
    moved aside first (a rename cannot replace a non-empty folder) and deleted after."""
    old = None
    if final.exists():
        old = final.with_name(final.name + ".old.tmp")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
