"""SFT and DPO sharded over two CPU processes (gloo) train like one process that
accumulates the same two micro-batches per step: the same loss and gradient norm at every
step (to 1e-4) and the same final weights, saved as one normal ``save_pretrained`` folder
gathered from the shards. A sharded run that stops after a checkpoint resumes on the same
number of processes to the weights of the uninterrupted run, bit for bit. Sharded with
FSDP2 (torch's ``fully_shard``, prepared by accelerate from
``recipes/accelerate/fsdp2.yaml``) and with DeepSpeed ZeRO-3 (its CPU accelerator,
``recipes/accelerate/deepspeed_zero3.yaml``; run when DeepSpeed is installed)."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from dist_launch import ROOT, launch

BASE = ROOT / "posttrain/models/tiny_base"
CONFIGS = ["fsdp2.yaml", "deepspeed_zero3.yaml"]


def _needs(config: str) -> None:
    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed")


def _recipe(tmp_path, name: str, stage: str, accumulation: int, fields: str):
    p = tmp_path / f"{name}.yaml"
    p.write_text(textwrap.dedent(f"""
        output_dir: {tmp_path / name}
        seed: 0
        model: {{name_or_path: {BASE}}}
        stages:
          {stage}:
            per_device_batch_size: 4
            gradient_accumulation_steps: {accumulation}
            warmup_ratio: 0.0
            logging_steps: 1
    """) + textwrap.indent(textwrap.dedent(fields), " " * 4))
    return p


def _all_rows(run, stage):
    return [json.loads(x) for x in (run / stage / "metrics.jsonl").read_text().splitlines()]


def _rows(run, stage):
    return [(r["step"], r["loss"], r["grad_norm"]) for r in _all_rows(run, stage) if "loss" in r]


def _weights(folder):
    return load_file(folder / "model.safetensors")


def _assert_same_training(one, two, stage, steps, lr):
    a, b = _rows(one, stage), _rows(two, stage)
    assert [r[0] for r in a] == [r[0] for r in b] == list(range(1, steps + 1))
    for x, y in zip(a, b):
        assert x[1:] == pytest.approx(y[1:], rel=1e-4)
    w1, w2 = _weights(one / stage / "model"), _weights(two / stage / "model")
    base = load_file(BASE / "model.safetensors")
    assert w1.keys() == w2.keys() == base.keys()  # the bare model's names, one normal folder
    assert all(v.dtype == torch.float32 for v in w2.values())  # the fp32 master weights
    moved = max(float((w1[k] - base[k].float()).abs().max()) for k in w1)
    diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert moved > lr  # it trained
    # fp32 summation order differs between one and two processes; Adam's early steps move a
    # weight by about lr times the sign of its gradient, so a near-zero gradient component
    # can land a fraction of a step apart
    assert diff < lr / 10


SFT = """
    train_data: [{{path: {data}, amount: 64}}]
    eval_data: [{{path: {eval}, amount: 12}}]
    eval_steps: 2
    learning_rate: 1.0e-3
    max_steps: 4
    max_length: 256
    save_steps: 2
    keep_last: 3
"""


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """``(run folder, recipe folder)`` of the one-process runs the sharded ones must match:
    built on first use, per stage."""
    done: dict = {}

    def get(stage: str, fields: str):
        if stage not in done:
            tmp = tmp_path_factory.mktemp(f"one-{stage}")
            launch(None, 1, ["run", _recipe(tmp, "one", stage, 2, fields)], tmp / "cache")
            done[stage] = tmp / "one"
        return done[stage]

    return get


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("config", CONFIGS)
def test_sft_sharded_on_two_processes_matches_one_process_and_resumes(tmp_path, one_process, config):
    _needs(config)
    fields = SFT.format(data=ROOT / "data/tiny/sft_train.jsonl", eval=ROOT / "data/tiny/sft_eval.jsonl")
    cache = tmp_path / "cache"
    r = launch(config, 2, ["run", _recipe(tmp_path, "two", "sft", 1, fields)], cache)
    assert "4 steps of 2 micro-batches x 4" in r.stderr  # a world of 2, not two lone runs
    one = one_process("sft", fields)
    _assert_same_training(one, tmp_path / "two", "sft", 4, 1e-3)
    # 12 held-out rows = 3 batches of 4: 2 on the first process, 1 on the second, which
    # repeats a forward so that the sharded forwards pair up; the loss is over the 12 rows
    evals = [[(r["step"], r["eval_loss"]) for r in _all_rows(run, "sft") if "eval_loss" in r]
             for run in (one, tmp_path / "two")]
    assert [s for s, _ in evals[0]] == [s for s, _ in evals[1]] == [2, 4]
    assert [x for _, x in evals[0]] == pytest.approx([x for _, x in evals[1]], rel=1e-5)

    # A crash after the step-2 checkpoint: its later checkpoint and output are gone.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two", resumed)
    ckpts = resumed / "sft/checkpoints"
    step2, step4 = sorted(p.name for p in ckpts.iterdir())  # stepN-tokensT: T depends on the data
    assert step2.startswith("step2-tokens") and step4.startswith("step4-tokens"), (step2, step4)
    shards = "optimizer_shards" if config == "fsdp2.yaml" else "deepspeed/policy"
    assert len(list((ckpts / step2 / "trainer_state" / shards).glob("*"))) >= 2  # one per process
    shutil.rmtree(ckpts / step4)
    shutil.rmtree(resumed / "sft/model")
    (resumed / "sft/DONE").unlink()
    r = launch(config, 2, ["run", _recipe(tmp_path, "resumed", "sft", 1, fields)], cache)
    assert "resuming at step 2" in r.stderr
    w_two, w_resumed = _weights(tmp_path / "two/sft/model"), _weights(resumed / "sft/model")
    for k in w_two:  # the restored shards, optimizer state and RNG continue exactly
        assert torch.equal(w_two[k], w_resumed[k]), k


DPO = """
    train_data: [{{path: {data}, amount: 48}}]
    learning_rate: 1.0e-4
    max_steps: 3
    max_length: 256
    beta: 0.5
"""


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("config", CONFIGS)
def test_dpo_sharded_on_two_processes_matches_one_process(tmp_path, one_process, config):
    _needs(config)
    fields = DPO.format(data=ROOT / "data/tiny/dpo_train.jsonl")
    launch(config, 2, ["run", _recipe(tmp_path, "two", "dpo", 1, fields)], tmp_path / "cache")
    _assert_same_training(one_process("dpo", fields), tmp_path / "two", "dpo", 3, 1e-4)
