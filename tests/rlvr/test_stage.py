"""The RLVR stage through ``posttrain run`` on the real tiny OLMo-2: a short GRPO run with
each rollout engine (vLLM included: it must run here, as in CI), two RLVR stages in one
recipe, bad configs stopped before any model loads with one line naming the field, and
the ``code`` verifier refused without its sandbox."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from posttrain.errors import PosttrainError
from posttrain.recipe.load import load_recipe
from rlvr_helpers import metrics, run, stage, step_rows, write_prompts, write_recipe

STEP_KEYS = ("reward/mean", "reward/std", "accuracy/all", "accuracy/evenlen:score", "policy/kl", "policy/entropy",
             "policy/clip_frac_low", "policy/clip_frac_high", "policy/loss", "policy/grad_norm", "length/mean",
             "length/max", "length/truncated_frac", "sampling/dropped_group_frac", "rollout/tokens_per_s",
             "tokens_per_s", "policy/mismatch/abs_diff_mean", "verifier/errors", "verifier/timeouts",
             "verifier/crashes", "time/generate_s", "time/update_s")


def _final_weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def test_grpo_with_the_hf_engine(workdir, tiny_model_dir):
    rlvr = stage(workdir, eval_prompts=[{"path": str(workdir / "eval.jsonl")}], eval_steps=2, eval_samples=2,
                 save_steps=2)
    r = run(write_recipe(workdir, tiny_model_dir, {"rlvr": rlvr}), workdir=workdir)
    assert r.returncode == 0, r.stderr[-4000:]
    out = workdir / "run" / "rlvr"
    rows = step_rows(out / "metrics.jsonl")
    assert [x["step"] for x in rows] == [1, 2, 3]
    for key in STEP_KEYS:
        assert all(key in x for x in rows), key
    for x in rows:
        assert x["reward/mean"] in {10.0 * k / 8 for k in range(9)}  # 8 responses scored 0 or 10
        assert x["length/max"] <= 6 and 0 <= x["length/truncated_frac"] <= 1
        # the hf engine samples from the trained model itself: its log-probs are the trainer's
        assert x["policy/mismatch/abs_diff_mean"] < 1e-4
        assert x["verifier/errors"] == x["verifier/crashes"] == 0
    evals = [x for x in metrics(out / "metrics.jsonl") if "eval/accuracy" in x]
    assert [x["step"] for x in evals] == [0, 2, 3]  # the input model, every 2 steps, the end
    for x in evals:
        assert {"eval/accuracy/evenlen:score", "eval/pass@1", "eval/pass@2", "eval/pass@1/evenlen:score"} <= set(x)
        assert x["eval/pass@1"] <= x["eval/pass@2"]
    assert [p.name.split("-")[0] for p in sorted((out / "checkpoints").iterdir())] == ["step2", "step3"]
    trained, start = _final_weights(out / "model"), _final_weights(tiny_model_dir)
    assert any(not torch.equal(trained[k], start[k].to(trained[k].dtype)) for k in trained)
    assert (out / "model" / "tokenizer.json").is_file()


@pytest.mark.timeout(900)
def test_grpo_with_the_vllm_engine_syncs_weights(workdir, tiny_model_dir):
    # lr 1e-2 moves the tiny model's log-probs by ~1 nat per step (tests/rollout): a stale
    # engine would be far off the trainer at step 2; a synced one agrees to fp32 noise.
    # max_length 2048 + 6 exceeds the tiny model's 1024 positions: prompts are limited to
    # 1018 tokens so that vLLM accepts the context length
    rlvr = stage(workdir, engine="vllm", max_steps=2, learning_rate=1e-2, save_steps=1, beta=0.0,
                 vllm={"kv_cache_gb": 1}, max_length=2048)
    r = run(write_recipe(workdir, tiny_model_dir, {"rlvr": rlvr}), workdir=workdir, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    out = workdir / "run" / "rlvr"
    rows = step_rows(out / "metrics.jsonl")
    assert [x["step"] for x in rows] == [1, 2]
    assert rows[0]["policy/grad_norm"] > 0  # the first step moved the policy
    for x in rows:
        assert x["policy/mismatch/abs_diff_mean"] < 1e-3, x["policy/mismatch/abs_diff_mean"]
    # how far the engine would be off without the sync: the step-1 policy vs the input model
    from posttrain.policy import Policy

    step1 = next(p for p in (out / "checkpoints").iterdir() if p.name.startswith("step1-"))
    ids = [0, 17, 42, 99, 310, 7, 256, 11, 12, 13]
    moved = [Policy.load(m, device="cpu", dtype="float32").response_logprobs([ids[:3]], [ids[3:]])[0]
             for m in (tiny_model_dir, step1)]
    assert float((moved[0] - moved[1]).abs().mean()) > 100 * 1e-3
    assert (out / "model" / "config.json").is_file()


def test_several_updates_per_rollout_batch(workdir, tiny_model_dir):
    # 2 passes x 2 minibatches: 4 optimizer steps per RL step, the ratio taken against the
    # old log-probs computed once before the first update (their own pass, timed)
    rlvr = stage(workdir, max_steps=2, num_iterations=2, num_minibatches=2, per_device_batch_size=2,
                 learning_rate=1e-2, rollout_correction="mask_token", policy_loss="gspo", clip_low=3e-4,
                 clip_high=4e-4, loss_aggregation="seq_mean_token_mean")
    r = run(write_recipe(workdir, tiny_model_dir, {"rlvr": rlvr}), workdir=workdir)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = step_rows(workdir / "run" / "rlvr" / "metrics.jsonl")
    assert [x["updates"] for x in rows] == [4, 8]
    for x in rows:
        assert x["time/old_logprobs_s"] > 0
        # the later updates see a moved policy: ratios leave 1 and GSPO's tight clip bites
        assert x["policy/approx_kl"] > 0 and abs(x["policy/ratio_mean"] - 1) > 1e-3
        assert x["policy/clip_frac_low"] + x["policy/clip_frac_high"] > 0
        # the hf engine's log-probs are the trainer's: the masking correction drops nothing
        assert x["policy/mismatch/corrected_frac"] == 0


def test_two_rlvr_stages_in_one_recipe(workdir, tiny_model_dir):
    write_prompts(workdir / "second.jsonl", 4, start=20)
    stages = {"rlvr_mixed": stage(workdir, max_steps=1),
              "rlvr_math": stage(workdir, max_steps=1, train_data=[{"path": str(workdir / "second.jsonl")}],
                                 learning_rate=5e-4)}
    r = run(write_recipe(workdir, tiny_model_dir, stages), workdir=workdir)
    assert r.returncode == 0, r.stderr[-4000:]
    run_dir = workdir / "run"
    assert "stage rlvr_mixed (rlvr): from" in r.stderr
    assert f"stage rlvr_math (rlvr): from {run_dir / 'rlvr_mixed' / 'model'} into" in r.stderr
    for name in ("rlvr_mixed", "rlvr_math"):
        assert (run_dir / name / "model" / "model.safetensors").is_file()
        assert len(step_rows(run_dir / name / "metrics.jsonl")) == 1
    first, second = _final_weights(run_dir / "rlvr_mixed" / "model"), _final_weights(run_dir / "rlvr_math" / "model")
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the second stage trained on the first's output
    resolved = (run_dir / "recipe.yaml").read_text()
    assert "rlvr_math:\n    type: rlvr" in resolved and "rlvr_mixed:\n    type: rlvr" in resolved


@pytest.mark.parametrize("override, message", [
    ({"samples_per_prompt": 1}, "stages.rlvr: samples_per_prompt: GRPO/RLOO need at least 2 samples per prompt"),
    ({"advantage": "gae"}, "stages.rlvr: advantage: 'gae' needs a value model (algorithm: ppo)"),
    ({"advantage": "nope"}, "stages.rlvr.advantage: unknown advantage estimator 'nope'"),
    ({"policy_loss": "nope"}, "stages.rlvr.policy_loss: unknown policy loss 'nope'"),
    ({"algorithm": "a2c"}, "stages.rlvr.algorithm: Input should be 'grpo' or 'ppo'"),
    ({"engine": "sglang"}, "stages.rlvr.engine: Input should be 'hf', 'vllm' or 'vllm_server'"),
    ({"temperature": 0}, "stages.rlvr.temperature: Input should be greater than 0"),
    ({"gradient_accumulation_steps": 4}, "stages.rlvr.gradient_accumulation_steps: not used by RLVR"),
    ({"eval_data": [{"path": "x/y"}]},
     "stages.rlvr.eval_data: not used by RLVR: give held-out prompts as eval_prompts"),
    ({"loss_aggregation": "mean"}, "stages.rlvr.loss_aggregation: Input should be"),
    ({"kl_estimator": "k4"}, "stages.rlvr.kl_estimator: Input should be 'k1', 'k2' or 'k3'"),
    ({"rollout_correction": "clip"}, "stages.rlvr.rollout_correction: Input should be"),
    ({"tis_cap": 1.0}, "stages.rlvr.tis_cap: Input should be greater than 1"),
    ({"vllm": {"kv_cache_gb": 0.5}}, "stages.rlvr.vllm.kv_cache_gb: Input should be a valid integer"),
    ({"train_data": [{"path": "missing.jsonl"}]}, "stages.rlvr.train_data.0.path: no such data file: missing.jsonl"),
])
def test_bad_config_is_one_line_naming_the_field(workdir, tiny_model_dir, override, message):
    recipe = write_recipe(workdir, tiny_model_dir, {"rlvr": {k: v for k, v in stage(workdir, **override).items()
                                                            if k != "type"}})
    with pytest.raises(PosttrainError) as e:
        load_recipe(recipe)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_bad_config_exits_2_before_any_model_loads(workdir, tiny_model_dir):
    recipe = write_recipe(workdir, tiny_model_dir, {"rlvr": stage(workdir, samples_per_prompt=1)})
    r = run(recipe, workdir=workdir)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "stages.rlvr: samples_per_prompt" in r.stderr and not (workdir / "run").exists()
    # an unknown verifier in the prompts: one line naming the file, before the model loads
    bad = workdir / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "dataset": "no_such_verifier", "ground_truth": 1}) + "\n")
    r = run(write_recipe(workdir, tiny_model_dir, {"rlvr": stage(workdir, train_data=[{"path": str(bad)}])}),
            workdir=workdir)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()[-1:]) == 1
    assert f"stages.rlvr.train_data.0: {bad}: line 1: dataset: unknown verifier 'no_such_verifier'" in r.stderr
    assert not (workdir / "run" / "rlvr" / "checkpoints").exists()


def test_code_verifier_needs_its_sandbox(workdir, tiny_model_dir, tmp_path):
    code = workdir / "code.jsonl"
    code.write_text(json.dumps({"prompt": "Write f.", "dataset": "code",
                                "ground_truth": ["assert f() == 1"]}) + "\n")
    no_bwrap = tmp_path / "empty-bin"
    no_bwrap.mkdir()
    assert shutil.which("bwrap", path=str(no_bwrap)) is None
    recipe = write_recipe(workdir, tiny_model_dir, {"rlvr": stage(workdir, train_data=[{"path": str(code)}],
                                                                  max_steps=1)})
    r = run(recipe, workdir=workdir, PATH=str(no_bwrap))
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "stages.rlvr.code_sandbox:" in last and "bwrap" in last and "rlimits_only" in last, last
    assert not (workdir / "run" / "rlvr" / "checkpoints").exists()
    # allowed explicitly: resource limits only, the run trains
    recipe = write_recipe(workdir, tiny_model_dir, {"rlvr": stage(workdir, train_data=[{"path": str(code)}],
                                                                  max_steps=1, code_sandbox="rlimits_only")})
    r = run(recipe, workdir=workdir, PATH=str(no_bwrap))
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(step_rows(workdir / "run" / "rlvr" / "metrics.jsonl")) == 1


def test_lora_policy_with_the_adapter_disabled_base_as_reference(workdir, tiny_model_dir):
    rlvr = stage(workdir, max_steps=2, beta=0.1, learning_rate=3e-2, lora={"r": 4, "alpha": 8})
    r = run(write_recipe(workdir, tiny_model_dir, {"rlvr": rlvr}), workdir=workdir)
    assert r.returncode == 0, r.stderr[-4000:]
    out = workdir / "run" / "rlvr"
    rows = step_rows(out / "metrics.jsonl")
    # LoRA starts as the identity (B = 0): the reference (adapter disabled) equals the
    # policy at step 1, so k3 is 0 there; after an update it is not
    assert rows[0]["policy/kl"] < 1e-9 and rows[1]["policy/kl"] > 1e-6
    merged = _final_weights(out / "model")
    assert not any("lora" in k for k in merged) and (out / "model" / "adapter").is_dir()
