"""The ``rm`` stage end to end through the real ``posttrain run``: a reward model trained
from the shipped tiny base on the tiny task's preference pairs ranks held-out pairs well
above chance, its folder loads with plain transformers and scores the same, and the policy
(not the reward model) is what the next stage starts from."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posttrain.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
EVAL = ROOT / "data/tiny/dpo_eval.jsonl"
TRAIN = ROOT / "data/tiny/dpo_train.jsonl"
BASE = ROOT / "posttrain/models/tiny_base"

RECIPE = """\
output_dir: {out}
seed: 0
model: {{name_or_path: {base}}}
stages:
  rm:
    train_data: [{{path: {train}, amount: {pairs}}}]
    eval_data: [{{path: {eval}, amount: 1.0}}]
    learning_rate: {lr}
    max_steps: {steps}
    per_device_batch_size: 16
    max_length: 256
    warmup_ratio: 0.1
    logging_steps: 10
    eval_steps: {steps}
  dpo:
    train_data: [{{path: {train}, amount: 16}}]
    learning_rate: 1.0e-6
    max_steps: 1
    per_device_batch_size: 16
    max_length: 256
    reference_cache_dir: {out}/refcache
"""


def _posttrain(*args):
    return subprocess.run([sys.executable, "-m", "posttrain.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm_run")
    recipe = out / "recipe.yaml"
    recipe.write_text(RECIPE.format(out=out / "run", base=BASE, train=TRAIN, eval=EVAL, pairs=STEPS * 16, lr=LR,
                                    steps=STEPS))
    proc = _posttrain("run", str(recipe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "run"


LR, STEPS = 3.0e-4, 100


def test_rm_ranks_held_out_pairs_well_above_chance(run):
    rows = read_metrics(run / "rm" / "metrics.jsonl")
    assert rows[0]["data/eval/kept"] == 200
    final = [r for r in rows if "eval_accuracy" in r][-1]
    assert final["step"] == STEPS
    # Chance is 0.5 (sd 0.035 over 200 pairs). Most rejected answers need the arithmetic
    # checked (a miscopied operand, a ones digit off by one), which a reward model read at
    # the last token learns slowly from the base: 60 steps reach ~0.61 overall; structural
    # mistakes are learned first (next test; a longer run from the SFT model:
    # notes/readme/ppo_rm.md).
    assert final["eval_accuracy"] >= 0.55, final
    assert final["eval_margin"] > 0
    assert {"loss", "accuracy", "margin", "chosen", "rejected"} <= set([r for r in rows if "loss" in r][-1])


def test_saved_reward_model_loads_with_plain_transformers(run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = run / "rm" / "model"
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "Olmo2ForSequenceClassification" and model.config.num_labels == 1
    assert model.config.pad_token_id == tok.pad_token_id
    # Score the held-out pairs with nothing from posttrain: chat template, right padding,
    # the model's own pooling. The accuracy is the one the stage reported at its end.
    rows = [json.loads(line) for line in EVAL.read_text().splitlines()]
    tok.padding_side = "right"
    correct = 0
    by_kind: dict = {}
    for start in range(0, len(rows), 50):
        part = rows[start:start + 50]
        texts = [tok.apply_chat_template(r[side], tokenize=False) for side in ("chosen", "rejected") for r in part]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            scores = model(**enc).logits.squeeze(-1)
        wins = (scores[: len(part)] > scores[len(part):]).tolist()
        correct += sum(wins)
        for r, w in zip(part, wins):
            by_kind.setdefault(r.get("rejected_kind"), []).append(float(w))
    final = [r for r in read_metrics(run / "rm" / "metrics.jsonl") if "eval_accuracy" in r][-1]
    assert correct / len(rows) == pytest.approx(final["eval_accuracy"], abs=0.011)
    # Mistakes in the working's structure (another operation, a dropped carry, borrow or
    # sign) are ranked well above chance (measured 30/43 after 100 steps at lr 3e-4; chance
    # 0.5, sd 0.08; 60 steps at lr 1e-3 ranked 26/43 once the task's questions got ~3x more
    # phrasings, which the reward model, read at the last token, has to see past).
    structural = [w for k in ("other_op", "dropped_carry", "dropped_borrow", "dropped_sign")
                  for w in by_kind.get(k, [])]
    assert len(structural) >= 30 and sum(structural) / len(structural) >= 0.65, by_kind


def test_the_next_stage_starts_from_the_policy_not_the_reward_model(run):
    dpo = json.loads((run / "dpo" / "stage.json").read_text())
    assert dpo["inputs"]["model"] == {"base": dpo["inputs"]["model"]["base"]} and "stage" not in dpo["inputs"]["model"]
    assert json.loads((run / "rm" / "stage.json").read_text())["produces"] == "model"
    assert (run / "dpo" / "model" / "config.json").is_file()
    assert not (run / "rm" / "eval.json").exists()


def test_rm_stage_refuses_lora_naming_the_field(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "run", base=BASE, train=TRAIN, eval=EVAL, pairs=16, lr=LR, steps=1))
    proc = _posttrain("run", str(recipe), "--dry-run", "--set", "stages.rm.lora={r: 4}")
    assert proc.returncode == 2
    assert "stages.rm.lora: the rm stage trains all weights" in proc.stderr and "Traceback" not in proc.stderr
