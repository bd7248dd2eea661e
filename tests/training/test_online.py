"""The online driver (``posttrain.training.OnlineTrainer``) on real small OLMo-2s: the
after-update hook follows every optimizer step, two models step with their own learning
rates and schedules, and a run SIGKILLed mid-step resumes to bitwise the same weights and
optimizer states as an uninterrupted one. The toy run is ``online_toy.py``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from online_toy import build, checksum

HERE = Path(__file__).parent


def test_hook_runs_after_every_optimizer_step(ctx_factory, small_dropout_model_dir, small_value_model_dir):
    ctx = ctx_factory(logging_steps=1, save_steps=2)
    events, seen = [], []
    trainer = None

    def after_update(ev):
        policy, value = (trainer.engine.models[n] for n in ("policy", "value"))
        events.append((ev.step, ev.pass_index, ev.minibatch, ev.update, ev.last_in_batch))
        seen.append((checksum(policy.model), checksum(value.model), policy.optimizer_steps, value.optimizer_steps))

    trainer = build(ctx, small_dropout_model_dir, small_value_model_dir, steps=3, passes=2, minibatches=2, after_update=after_update)
    start = (checksum(trainer.engine.models["policy"].model), checksum(trainer.engine.models["value"].model))
    trainer.train()

    # 3 steps x 2 passes x 2 minibatches, in order; the last of each step marked
    assert events == [(s, p, m, 4 * s + 2 * p + m + 1, (p, m) == (1, 1))
                      for s in range(3) for p in range(2) for m in range(2)]
    # at every call both models have just taken their optimizer step: new weights each time
    assert [s[2:] for s in seen] == [(u, u) for u in range(1, 13)]
    policy_sums, value_sums = [start[0]] + [s[0] for s in seen], [start[1]] + [s[1] for s in seen]
    # (the policy's linear warmup starts at lr 0: its first step leaves the weights as they were)
    assert policy_sums[1] == policy_sums[0] and all(a != b for a, b in zip(policy_sums[1:], policy_sums[2:]))
    assert all(a != b for a, b in zip(value_sums, value_sums[1:]))

    policy, value = trainer.engine.models["policy"], trainer.engine.models["value"]
    for tm in (policy, value):
        assert all(int(s["step"]) == 12 for s in tm.optimizer.state_dict()["state"].values())
    # schedules over steps x passes x minibatches = 12 optimizer steps: linear ends at 0
    assert policy.scheduler.get_last_lr()[0] == 0.0 and value.scheduler.get_last_lr()[0] == 1e-2

    rows = [json.loads(line) for line in (ctx.stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("policy/loss", "value/loss", "policy/lr", "policy/grad_norm", "value/grad_norm", "policy/ratio",
                "reward", "time/produce_s", "time/update_s", "tokens_per_s"):
        assert all(key in r for r in rows), key
    assert rows[-1]["updates"] == 12 and rows[-1]["tokens"] == 3 * 8 * 10  # each rollout sample counted once

    names = sorted(p.name for p in ctx.checkpoint_dir.iterdir())
    assert names == ["step2-tokens160", "step3-tokens240"]
    final = ctx.checkpoint_dir / "step3-tokens240"
    files = {p.name for p in (final / "trainer_state").iterdir()}
    assert files == {"state.json", "optimizer.pt", "scheduler.pt", "optimizer-value.pt", "scheduler-value.pt",
                     "rng_0.pt", "driver_0.pt"}
    state = json.loads((final / "trainer_state" / "state.json").read_text())
    assert state["models"] == ["policy", "value"] and state["optimizer_steps"] == {"policy": 12, "value": 12}
    assert torch.load(final / "trainer_state" / "driver_0.pt")["produced"] == 3
    out = load_file(ctx.model_dir / "model.safetensors")  # the stage's output: the first model
    for name, p in policy.model.state_dict().items():
        if name in out:
            assert torch.equal(out[name], p), name
    assert (final / "models" / "value" / "model.safetensors").is_file()


def test_two_models_step_with_their_own_learning_rates(ctx_factory, small_model_dir, small_value_model_dir):
    """One update, constant schedules, no clipping or decay. Adam's first step moves each
    weight by lr * g / (|g| + eps): m_hat = g and v_hat = g^2 after bias correction, so
    every weight with a gradient well above eps = 1e-8 moves by lr exactly, none by more."""
    lrs = {"policy": 1e-3, "value": 3e-2}
    ctx = ctx_factory(logging_steps=1)
    trainer = build(ctx, small_model_dir, small_value_model_dir, steps=1, passes=1, minibatches=1, micro_batch_size=4,
                    policy_lr=lrs["policy"], value_lr=lrs["value"], lr_scheduler="constant", max_grad_norm=None,
                    value_opt=dict(max_grad_norm=None, weight_decay=0.0))
    before = {n: {k: p.detach().clone() for k, p in tm.model.named_parameters()}
              for n, tm in trainer.engine.models.items()}
    trainer.train()
    for name, lr in lrs.items():
        tm = trainer.engine.models[name]
        assert tm.optimizer.param_groups[0]["lr"] == lr
        moved = torch.cat([(p.detach() - before[name][k]).abs().flatten() for k, p in tm.model.named_parameters()])
        assert moved.max() <= lr * (1 + 1e-3), name
        assert moved.max() >= lr * (1 - 1e-3), name
        # most weights get a gradient; those move by lr (to float32 rounding of w - lr)
        assert ((moved - lr).abs() < lr * 1e-3).float().mean() > 0.5, name


def _run(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, str(HERE / "online_toy.py"), *map(str, args)], env=env, **kw)


def _finish(proc, log: Path):
    proc.wait(timeout=300)
    err = log.read_text()
    assert proc.returncode == 0, f"{log.name}: {err[-3000:]}"
    return err


def _final(run: Path):
    from posttrain.training.checkpoint import latest_checkpoint

    final = latest_checkpoint(run / "sft" / "checkpoints")
    weights = {"policy": load_file(final / "model.safetensors"),
               "value": load_file(final / "models" / "value" / "model.safetensors")}
    state = final / "trainer_state"
    optim = {"policy": torch.load(state / "optimizer.pt"), "value": torch.load(state / "optimizer-value.pt")}
    return final, weights, optim


def _assert_same_tree(a, b, where=""):
    if torch.is_tensor(a):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.timeout(900)
def test_killed_online_run_resumes_to_identical_models_and_optimizers(tmp_path, small_dropout_model_dir, small_value_model_dir):
    from posttrain.training.checkpoint import list_checkpoints

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # the uninterrupted run goes on beside the one to be killed
    models = [small_dropout_model_dir, small_value_model_dir]
    logs = {name: tmp_path / f"{name}.log" for name in ("straight", "killed", "resumed")}
    with open(logs["straight"], "w") as a, open(logs["killed"], "w") as b:
        proc_straight = _run([straight, *models, "--steps", 6], stdout=a, stderr=a)
        proc = _run([killed, *models, "--steps", 6, "--pause-at", 3], stdout=b, stderr=b)
    deadline = time.time() + 300
    while not (killed / "paused").exists():  # held inside step 3's second pass
        assert proc.poll() is None, f"the run to kill ended on its own: {logs['killed'].read_text()[-3000:]}"
        assert time.time() < deadline, "the run to kill never reached step 3"
        time.sleep(0.05)
    ckpts = killed / "sft" / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpts)] == ["step2-tokens160"]  # finished, not .tmp
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # what a kill in the middle of a save leaves: a newer folder that never got its rename
    fake = ckpts / "step4-tokens320.tmp" / "trainer_state"
    fake.mkdir(parents=True)
    (fake / "state.json").write_text(json.dumps({"step": 4, "tokens": 320}))

    with open(logs["resumed"], "w") as c:
        resumed_proc = _run([killed, *models, "--steps", 6], stdout=c, stderr=c)
    assert "resuming at step 2" in _finish(resumed_proc, logs["resumed"])
    _finish(proc_straight, logs["straight"])
    assert not list(ckpts.glob("*.tmp"))

    final_a, weights_a, optim_a = _final(straight)
    final_b, weights_b, optim_b = _final(killed)
    assert final_a.name == final_b.name == "step6-tokens480"
    for name in ("policy", "value"):
        _assert_same_tree(weights_a[name], weights_b[name], f"{name} weights")
        _assert_same_tree(optim_a[name], optim_b[name], f"{name} optimizer")
    base = load_file(small_dropout_model_dir / "model.safetensors")
    assert not torch.equal(weights_a["policy"]["model.layers.0.mlp.up_proj.weight"],
                           base["model.layers.0.mlp.up_proj.weight"])
    _assert_same_tree(torch.load(final_a / "trainer_state" / "driver_0.pt"),
                      torch.load(final_b / "trainer_state" / "driver_0.pt"), "driver state")

    hooks = [json.loads(x) for x in (killed / "hooks_0.jsonl").read_text().splitlines()]
    resumed = hooks[[h["kind"] for h in hooks].index("resume"):]
    assert resumed[0] == {"kind": "resume", "step": 2}
    # the resumed run redoes steps 2.. and its hook sees the same weights as the straight run's
    assert [(h["step"], h["update"]) for h in resumed[1:]] == [(s, 4 * s + k + 1) for s in range(2, 6)
                                                              for k in range(4)]
    straight_hooks = [json.loads(x) for x in (straight / "hooks_0.jsonl").read_text().splitlines()]
    assert [h["policy"] for h in straight_hooks[8:]] == [h["policy"] for h in resumed[1:]]

    def last_row(run):
        rows = [json.loads(x) for x in (run / "sft" / "metrics.jsonl").read_text().splitlines()]
        return {k: v for k, v in rows[-1].items() if "loss" in k or "grad_norm" in k or k == "reward"}

    assert last_row(straight) == last_row(killed)


@pytest.mark.timeout(900)
def test_two_processes_train_like_one_process_with_the_same_minibatches(tmp_path, small_model_dir,
                                                                         small_value_model_dir):
    """Under torchrun (gloo), each process takes every other sample of a step's batch; in
    order (no shuffle) each minibatch then holds the same samples as one process's, so the
    losses per step and the weights agree to float32 summation order: the engine divides
    by the items of the whole minibatch across processes, for both models (the policy
    counting items up front, the value model after its backward)."""
    models = [small_model_dir, small_value_model_dir]
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--steps", 3, "--share", "--micro-batch-size", 2]
    with open(tmp_path / "one.log", "w") as a:
        proc_one = _run([one, *models, *common], stdout=a, stderr=a)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # --standalone: torchrun picks a free port itself
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    with open(tmp_path / "two.log", "w") as b:
        proc_two = subprocess.Popen([*torchrun, str(HERE / "online_toy.py"), two, *models, *map(str, common)],
                                    env=env, stdout=b, stderr=b)
    _finish(proc_one, tmp_path / "one.log")
    _finish(proc_two, tmp_path / "two.log")
    assert (two / "hooks_1.jsonl").is_file()  # really a world of two

    def per_step(run):
        rows = [json.loads(x) for x in (run / "sft" / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["tokens"], *(r[f"{m}/{k}"] for m in ("policy", "value") for k in ("loss", "grad_norm")))
                for r in rows]

    a, b = per_step(one), per_step(two)
    assert [r[:2] for r in a] == [r[:2] for r in b] == [(1, 80), (2, 160), (3, 240)]
    for x, y in zip(a, b):  # losses and the norms of the reduced gradients
        assert x[2:] == pytest.approx(y[2:], rel=1e-4, abs=1e-6)
    _, weights_one, _ = _final(one)
    _, weights_two, _ = _final(two)
    for name, lr in (("policy", 1e-3), ("value", 1e-2)):
        base = load_file((small_model_dir if name == "policy" else small_value_model_dir) / "model.safetensors")
        diffs = torch.cat([(weights_two[name][k] - weights_one[name][k]).abs().flatten() for k in base])
        moved = torch.cat([(weights_one[name][k] - base[k]).abs().flatten() for k in base])
        assert moved.max() > lr
        # Adam's first steps move a weight by about lr times the sign of its gradient; where
        # a gradient cancels to float noise that sign may differ: a few weights off by a
        # fraction of one step (measured: value 1.7e-4 on 0.03% of weights; policy 3e-7).
        assert diffs.max() < lr
        assert (diffs > 2e-5).float().mean() < 1e-3
