"""PPO (``algorithm: ppo``) through ``posttrain run`` on the real tiny OLMo-2: the policy
and the value model train side by side with their own optimizers and learning rates,
the value model's first forward of a step reproduces the rollout's values, checkpoints
hold both models, and the value model starts from an ``rm`` stage of the same recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from rlvr_helpers import metrics, run, stage, step_rows, write_recipe

ROOT = Path(__file__).resolve().parents[2]
PPO_KEYS = ("value/loss", "value/loss_unscaled", "value/clip_frac", "value/pred_mean", "value/returns_mean",
            "value/explained_variance", "value/rollout_mean", "value/grad_norm", "value/lr", "reward/kl_penalty",
            "reward/total", "advantages/raw_std", "policy/loss", "policy/clip_frac_low", "policy/ratio_mean",
            "reward/mean", "length/mean")


def test_ppo_trains_policy_and_value_model(workdir, tiny_model_dir):
    rlvr = stage(workdir, algorithm="ppo", save_steps=2, learning_rate=1e-3, beta=0.05, kl_estimator="k1",
                 non_stop_penalty=-10.0, ppo={"value_learning_rate": 2e-3, "vf_coef": 0.1, "lam": 0.95})
    r = run(write_recipe(workdir, tiny_model_dir, {"rlvr": rlvr}), workdir=workdir)
    assert r.returncode == 0, r.stderr[-4000:]
    out = workdir / "run" / "rlvr"
    rows = step_rows(out / "metrics.jsonl")
    assert [x["step"] for x in rows] == [1, 2, 3]
    for x in rows:
        assert all(k in x for k in PPO_KEYS), [k for k in PPO_KEYS if k not in x]
        assert x["policy/lr"] == 1e-3 and x["value/lr"] == 2e-3
        # one update per step: the value model's forward in the loss is the rollout's own
        # (nothing clipped), and the policy's ratio is 1
        assert x["value/clip_frac"] == 0.0
        assert x["value/pred_mean"] == pytest.approx(x["value/rollout_mean"], abs=1e-4)
        assert x["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
        assert x["value/loss"] == pytest.approx(0.1 * x["value/loss_unscaled"], rel=1e-5)
        # the KL is in the reward, not the loss: 0 while the policy is its reference (the
        # first step), then not (k1 can take either sign per token, so only its presence)
        assert (x["reward/kl_penalty"] == 0.0) == (x["step"] == 1) and "policy/kl" not in x
        assert x["reward/total"] == pytest.approx(x["reward/mean"] + x["reward/kl_penalty"], abs=1e-4)
    # both models and both optimizers in every checkpoint; the value model is a plain
    # sequence classifier folder
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [p.name.split("-")[0] for p in ckpts] == ["step2", "step3"]
    for c in ckpts:
        value_cfg = AutoConfig.from_pretrained(c / "models" / "value")
        assert value_cfg.architectures == ["Olmo2ForSequenceClassification"] and value_cfg.num_labels == 1
        assert (c / "trainer_state" / "optimizer.pt").is_file()
        assert (c / "trainer_state" / "optimizer-value.pt").is_file()
        state = json.loads((c / "trainer_state" / "state.json").read_text())
        assert state["models"] == ["policy", "value"]
    assert json.loads((out / "model" / "config.json").read_text())["architectures"] == ["Olmo2ForCausalLM"]
    # the value model moved, and its decoder started from the policy's input weights
    start = load_file(tiny_model_dir / "model.safetensors")
    value = load_file(ckpts[-1] / "models" / "value" / "model.safetensors")
    shared = [k for k in value if k in start]
    assert len(shared) > 10 and any(not torch.equal(value[k], start[k].to(value[k].dtype)) for k in shared)


def test_value_model_from_an_rm_stage(workdir, tiny_model_dir):
    pairs = ROOT / "data" / "tiny" / "dpo_train.jsonl"
    rm = {"train_data": [{"path": str(pairs), "amount": 16}], "max_steps": 2, "per_device_batch_size": 8,
          "learning_rate": 1e-3, "max_length": 256}
    rlvr = stage(workdir, algorithm="ppo", max_steps=1, ppo={"value_model": {"from_stage": "rm"}})
    r = run(write_recipe(workdir, tiny_model_dir, {"rm": rm, "rlvr": rlvr}), workdir=workdir)
    assert r.returncode == 0, r.stderr[-4000:]
    rm_model = workdir / "run" / "rm" / "model"
    assert f"scalar head: kept from {rm_model}" in r.stderr
    # the policy comes from the recipe's model, not the reward model
    stage_json = json.loads((workdir / "run" / "rlvr" / "stage.json").read_text())
    assert "stage" not in stage_json["inputs"]["model"]
    rows = [x for x in metrics(workdir / "run" / "rlvr" / "metrics.jsonl") if "value/loss" in x]
    assert len(rows) == 1


def test_a_missing_value_model_is_one_line(workdir, tiny_model_dir):
    rlvr = stage(workdir, algorithm="ppo", max_steps=1, ppo={"value_model": str(workdir / "no_such_rm")})
    r = run(write_recipe(workdir, tiny_model_dir, {"rlvr": rlvr}), workdir=workdir)
    assert r.returncode == 2, r.stderr[-3000:]
    assert f"stages.rlvr.ppo.value_model: no such folder: {workdir / 'no_such_rm'}" in r.stderr
    assert "Traceback" not in r.stderr and not (workdir / "run").exists()  # stopped before anything loaded
