"""Run under ``torchrun --nproc_per_node 2`` (gloo): ``posttrain.distributed`` across real
processes. Each process writes ``OUT/rank<r>.json``; ``test_sharing.py`` asserts on them.

    python sharing_checks.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def grpo(r: torch.Tensor, group: int = 4) -> torch.Tensor:
    """(r - group mean) / group std (Bessel), per consecutive group."""
    g = r.view(-1, group)
    return ((g - g.mean(1, keepdim=True)) / g.std(1, keepdim=True)).flatten()


def main(out: Path) -> None:
    from posttrain.distributed import gather_1d, map_shared, share, spanning_groups, world_and_rank

    dist.init_process_group("gloo")
    world, rank = world_and_rank()
    seen: list[int] = []

    def squares(items):
        seen.extend(items)
        return [i * i for i in items]

    rewards = torch.tensor([1., 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0])  # 3 groups of 4, group 1 cut in two
    part = share(len(rewards), rank, world)
    report = {
        "world": world,
        "map": map_shared(squares, list(range(7))),
        "my_items": seen,
        "gathered": gather_1d(torch.arange(rank * 10, rank * 10 + (4 if rank == 0 else 3))).tolist(),
        "part": [part.start, part.stop],
        "advantages": spanning_groups(rewards[part.start:part.stop], part.start, grpo).tolist(),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
