"""Work shared by two real processes (torchrun, gloo) rather than repeated: each maps its
own share of the items and both get every result in order; tensors of different lengths
gather in process order; and a group statistic (GRPO's group mean and std) comes out the
same when a group's samples are split between the processes, as one process computes it
on the whole batch (``sharing_checks.py``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dist_launch import ROOT, env
from posttrain.distributed import share


def test_shares_are_contiguous_near_equal_and_cover_everything():
    assert [list(share(7, r, 2)) for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6]]
    assert [list(share(2, r, 4)) for r in range(4)] == [[0], [1], [], []]
    assert [len(share(10, r, 3)) for r in range(3)] == [4, 3, 3]


@pytest.mark.timeout(300)
def test_two_processes_share_work_and_see_whole_groups(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests/distributed/sharing_checks.py"), str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(tmp_path / "cache"), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2))
    assert a["world"] == b["world"] == 2
    assert a["map"] == b["map"] == [i * i for i in range(7)]
    assert (a["my_items"], b["my_items"]) == ([0, 1, 2, 3], [4, 5, 6])  # each did its share only
    assert a["gathered"] == b["gathered"] == [0, 1, 2, 3, 10, 11, 12]
    assert (a["part"], b["part"]) == ([0, 6], [6, 12])
    # Groups [1,0,0,0], [1,1,0,0], [1,1,1,0]; the second is split 2 + 2 between the processes.
    # group 0: mean 1/4, std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5 -> 1.5, -0.5, -0.5, -0.5
    # group 1: mean 1/2, std sqrt(4 * 0.25 / 3) = 0.57735       -> +-0.5 / 0.57735 = +-0.866025
    # group 2: mean 3/4, std 0.5                                 -> 0.5, 0.5, 0.5, -1.5
    s = 0.5 / (1 / 3) ** 0.5
    assert a["advantages"] == pytest.approx([1.5, -0.5, -0.5, -0.5, s, s], abs=1e-6)
    assert b["advantages"] == pytest.approx([-s, -s, 0.5, 0.5, 0.5, -1.5], abs=1e-6)
