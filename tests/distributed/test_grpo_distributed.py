"""GRPO on two CPU processes (gloo) trains like one process on the same fixed rollout batch:
the same policy loss and gradient norm at every step (to 1e-4) and the same final weights,
under DDP (``recipes/accelerate/ddp.yaml``), FSDP2 (torch's ``fully_shard``,
``recipes/accelerate/fsdp2.yaml``) and DeepSpeed ZeRO-3 (run when DeepSpeed is installed).

Each process samples for its own share of the step's prompts, whole groups only (4 prompts
x 4 samples: 2 prompts, 8 samples per process), the loss's ``token_mean`` spans the whole
step across processes, and after every update the rollout engine of EVERY process receives
the full weights (gathered from the shards under FSDP2): the last weights each engine got
are the saved model's. The rollout engine returns fixed responses (``grpo_driver.py``),
because two processes cannot reproduce one process's random draws."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dist_launch import ROOT, launch
from rlvr_recipe import TINY_BASE, step_rows, write_prompts, write_recipe

DRIVER = ROOT / "tests/distributed/grpo_driver.py"
STEPS = 3
LR = 1e-3  # grpo_driver's learning rate


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, small_model_dir):
    tmp = tmp_path_factory.mktemp("grpo-one")
    launch(None, 1, [DRIVER, tmp / "out", small_model_dir, write_prompts(tmp), STEPS], tmp / "cache", module=False)
    return tmp / "out"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("config", ["ddp.yaml", "fsdp2.yaml", "deepspeed_zero3.yaml"])
def test_grpo_on_two_processes_matches_one_process(tmp_path, small_model_dir, one_process, config):
    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    two = tmp_path / "out"
    launch(config, 2, [DRIVER, two, small_model_dir, write_prompts(tmp_path), STEPS], tmp_path / "cache", module=False)

    a, b = step_rows(one_process), step_rows(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    for x, y in zip(a, b):
        # the same 16 samples and rewards per step: 2 right and 2 wrong of 4 per prompt,
        # a right one scoring the default reward_multiplier 10
        assert x["reward/mean"] == y["reward/mean"] == pytest.approx(5.0)
        assert x["policy/loss"] == pytest.approx(y["policy/loss"], rel=1e-4, abs=1e-6)
        assert x["policy/grad_norm"] == pytest.approx(y["policy/grad_norm"], rel=1e-4)

    w1, w2 = (load_file(out / "rlvr/model/model.safetensors") for out in (one_process, two))
    base = load_file(small_model_dir / "model.safetensors")
    assert w1.keys() == w2.keys() == base.keys()  # one normal save_pretrained folder, bare names
    assert all(v.dtype == torch.float32 for v in w2.values())
    assert max(float((w1[k] - base[k]).abs().max()) for k in w1) > LR  # it trained
    # fp32 sums in another order on two processes; Adam moves a weight by ~lr per step, so
    # a near-zero gradient component can land a fraction of a step apart
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < LR / 10

    for rank in range(2):  # every process's engine got the full, final weights
        synced = load_file(two / f"synced_{rank}.safetensors")
        assert synced.keys() == w2.keys()
        for k in w2:
            torch.testing.assert_close(synced[k].float(), w2[k], rtol=0, atol=0)


def _stage_run(tmp_path, config):
    recipe = write_recipe(tmp_path, max_steps=2, num_iterations=2, learning_rate=1e-4)
    launch(config, 2, ["run", recipe], tmp_path / "cache")
    return tmp_path / "run"


@pytest.fixture(scope="module")
def ddp_stage_run(tmp_path_factory):
    return _stage_run(tmp_path_factory.mktemp("rlvr-ddp"), "ddp.yaml")


@pytest.mark.timeout(600)
def test_rlvr_stage_trains_on_two_ddp_processes(ddp_stage_run):
    """The ``rlvr`` stage itself (``posttrain run``, hf engine, two optimizer passes per
    step) under DDP: it trains and saves one model. Each process samples its own prompts
    with its own seed, so this is not compared with one process (the test above does that
    on fixed rollouts)."""
    rows = step_rows(ddp_stage_run)
    assert [r["step"] for r in rows] == [1, 2]
    # right, wrong and unfinished (-1) answers of the tiny base: advantages are not all zero
    assert max(r["reward/std"] for r in rows) > 0
    trained, before = (load_file(d / "model.safetensors") for d in (ddp_stage_run / "rlvr/model", TINY_BASE))
    assert trained.keys() == before.keys()
    assert any(not torch.equal(trained[k], before[k].to(trained[k].dtype)) for k in trained)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("config", [
    "fsdp2.yaml",
    "deepspeed_zero3.yaml",
])
def test_rlvr_stage_sharded_matches_ddp(tmp_path, ddp_stage_run, config):
    """The same stage sharded: the same prompts per process and sampling seeds, and the
    engine given the same full weights after each update, so the same losses and gradient
    norms per step as DDP."""
    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    a, b = step_rows(ddp_stage_run), step_rows(_stage_run(tmp_path, config))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for x, y in zip(a, b):
        assert x["reward/mean"] == y["reward/mean"]
        assert x["policy/loss"] == pytest.approx(y["policy/loss"], rel=1e-4, abs=1e-6)
        assert x["policy/grad_norm"] == pytest.approx(y["policy/grad_norm"], rel=1e-4)
