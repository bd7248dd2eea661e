"""Sharing work between the processes of a multi-process run (``torch.distributed``, as
accelerate sets it up) instead of repeating it on each, and without leaving processes at a
barrier while one of them works (a wait longer than the collective timeout, 30 minutes by
default, kills the run).

- ``share(n, rank, world)``: a process's contiguous part of ``n`` items (near-equal).
- ``map_shared(fn, items)``: each process maps its part, every process gets all results in
  order (tokenization of a mixture, a reference pass, an evaluation's generations).
- ``gather_1d(tensor)``: every process's 1-D tensor, concatenated in process order; sizes
  may differ (a step's rewards when processes hold different numbers of samples).
- ``spanning_groups(local, start, fn)``: a per-sample statistic that needs whole groups
  (GRPO's group mean and std) when a group's samples sit on several processes: the values
  are gathered, ``fn`` runs on the whole batch, each process keeps its own slice.

All of them are plain functions of their inputs on one process (no process group), so
single-process code paths call them unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def world_and_rank() -> tuple[int, int]:
    """``(world size, rank)`` of the default process group; ``(1, 0)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def share(n: int, rank: int, world: int) -> range:
    """Process ``rank``'s contiguous part of ``range(n)``: the first ``n % world`` parts hold
    one item more than the others, so parts differ by at most one and cover everything."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def gather_objects(obj: Any) -> list:
    """Every process's ``obj`` (picklable), in process order."""
    import torch.distributed as dist

    world, _ = world_and_rank()
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def map_shared(fn: Callable[[Sequence[T]], list[R]], items: Sequence[T]) -> list[R]:
    """``fn(items)`` computed in parts: each process calls ``fn`` on its share of ``items``
    (``share``), and every process returns the whole result list in the order of
    ``items``. ``fn`` must return one result per item; results must be picklable."""
    world, rank = world_and_rank()
    part = share(len(items), rank, world)
    mine = list(fn([items[i] for i in part])) if len(part) else []
    if len(mine) != len(part):
        raise ValueError(f"map_shared: fn returned {len(mine)} results for {len(part)} items")
    return [r for chunk in gather_objects(mine) for r in chunk]


def gather_1d(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's 1-D ``tensor`` concatenated in process order (lengths may differ),
    on every process, on ``tensor``'s device."""
    import torch.distributed as dist

    world, _ = world_and_rank()
    if world == 1:
        return tensor
    device = tensor.device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    sizes = [torch.zeros((), dtype=torch.long, device=tensor.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor(tensor.numel(), device=tensor.device))
    longest = max(int(s) for s in sizes)
    padded = torch.zeros(longest, dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.numel()] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)]).to(device)


def spanning_groups(local: torch.Tensor, start: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn(whole batch)[start : start + len(local)]``: this process's slice of a
    per-sample statistic of the whole batch. ``local`` holds this process's values of
    samples ``start ..`` of the batch, processes holding consecutive slices in rank order
    (``share``), so groups cut by a process boundary are whole again in the gathered
    batch. Rewards are a few floats per sample: gathering them costs nothing next to a
    step."""
    whole = gather_1d(local)
    out = fn(whole)
    if out.shape[0] != whole.shape[0]:
        raise ValueError(f"spanning_groups: fn returned {out.shape[0]} values for {whole.shape[0]} samples")
    return out[start : start + local.shape[0]]
