"""The DPO stage end to end through the real ``posttrain run``: a DPO-only recipe from a
checkpoint folder raises held-out reward accuracy and margin, reports bad rows, writes
checkpoints and caches the reference pass."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def _posttrain(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "posttrain.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from posttrain.data import tiny_task

    out = tmp_path_factory.mktemp("dpo_data")
    rows = tiny_task.generate(0, {"dpo_train": 160, "dpo_eval": 48})
    bad = [{"chosen": [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}],
            "rejected": [{"role": "user", "content": "1+2"}, {"role": "assistant", "content": "3"}]},
           {"prompt": "What is 1 + 1?", "chosen": "", "rejected": "3"}]
    train = rows["dpo_train"][:3] + bad + rows["dpo_train"][3:]
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (out / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows["dpo_eval"]))
    return out


def test_dpo_only_recipe_from_a_checkpoint_folder(tiny_model_dir, data, tmp_path):
    run = tmp_path / "run"
    sets = [f"model.name_or_path={tiny_model_dir}", f"output_dir={run}",
            f"stages.dpo.train_data=[{{path: {data / 'train.jsonl'}, amount: 1.0}}]",
            f"stages.dpo.eval_data=[{{path: {data / 'eval.jsonl'}, amount: 1.0}}]",
            "stages.dpo.learning_rate=1.0e-4", "stages.dpo.eval_steps=10", "stages.dpo.save_steps=10",
            "stages.dpo.per_device_batch_size=8", f"stages.dpo.reference_cache_dir={tmp_path / 'refcache'}"]
    args = ["run", str(ROOT / "recipes/dpo_only.yaml")] + [x for s in sets for x in ("--set", s)]
    proc = _posttrain(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 dropped" not in proc.stderr  # reported per reason, with the rows
    assert "1 dropped (prompts differ; rows 3)" in proc.stderr
    assert "1 dropped (empty chosen or rejected; rows 4)" in proc.stderr
    rows = read_metrics(run / "dpo" / "metrics.jsonl")
    assert rows[0]["data/train/dropped"] == 2 and rows[0]["data/train/kept"] == 160
    assert rows[0]["data/train/dropped/prompts_differ/first_rows"] == "train.jsonl:3"
    train_rows = [r for r in rows if "loss" in r]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin", "logps/chosen",
                "logps/rejected"):
        assert key in train_rows[-1] and f"eval_{key}" in rows[-1]
    final = [r for r in rows if "eval_loss" in r][-1]
    # At step 0 the policy is the reference: every margin is 0, accuracy 0.
    assert final["eval_rewards/accuracy"] > 0.5, final
    assert final["eval_rewards/margin"] > 0, final
    assert (run / "dpo" / "model" / "config.json").is_file() and (run / "dpo" / "DONE").is_file()
    assert sorted(p.name.split("-")[0] for p in (run / "dpo" / "checkpoints").iterdir()) == ["step10", "step20"]
    assert len(list((tmp_path / "refcache").glob("*.pt"))) == 2  # train and eval

    # A second run on the same data and weights reuses the reference log-probs.
    again = _posttrain(*[a.replace(str(run), str(tmp_path / "run2")) for a in args],
                       "--set", "stages.dpo.max_steps=1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("reference log-probs: cache hit") == 2


def test_bad_loss_name_is_a_one_line_error(tiny_model_dir, tmp_path):
    proc = _posttrain("run", str(ROOT / "recipes/dpo_only.yaml"), "--dry-run",
                      "--set", f"model.name_or_path={tiny_model_dir}", "--set", "stages.dpo.loss=dpoo")
    assert proc.returncode == 2
    assert "stages.dpo.loss: unknown DPO loss 'dpoo'" in proc.stderr and "Traceback" not in proc.stderr
