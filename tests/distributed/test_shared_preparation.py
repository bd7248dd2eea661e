"""A stage's preparation on two real processes (torchrun, gloo) is shared, not repeated,
and gives what one process gives (``prep_checks.py``):

- the tokenization cache entry is built by the main process only; the other reads it; a
  build that fails on the main process fails with the same error on the other;
- the DPO reference pass: each process forwards part of the pairs, both get every score,
  bit for bit those of one process (a batch holds the same pairs whichever process scores
  it), and a second call hits the cache on both with no forward;
- the recipe eval: each process generates for part of the prompts, both get every
  response, token for token those of one process, and the same accuracy.

Then the recipe's eval through ``posttrain run`` on two DDP processes (every process takes
part; the main one writes): the same ``eval.json`` and responses as one process.

Uses the shipped pretrained tiny base, so the eval's responses are the model's answers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dist_launch import ROOT, env, launch

TINY_BASE = ROOT / "posttrain/models/tiny_base"


def _run(nproc: int, tmp_path) -> list[dict]:
    out = tmp_path / f"out{nproc}"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(ROOT / "tests/distributed/prep_checks.py"), str(TINY_BASE), str(out), str(tmp_path / f"cache{nproc}")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(tmp_path / f"cache{nproc}"), cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return [json.loads((out / f"rank{i}.json").read_text()) for i in range(nproc)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prep")
    return _run(1, tmp), _run(2, tmp)


def test_tokenization_is_built_once(runs):
    (one,), (a, b) = runs
    assert one["tokenization"]["built"] and not one["tokenization"]["hit"]
    assert a["tokenization"]["built"] and not b["tokenization"]["built"]  # the main process built it
    assert b["tokenization"]["hit"]  # ... and the other read its file
    assert a["tokenization"]["examples"] == b["tokenization"]["examples"] == one["tokenization"]["examples"]


def test_a_failed_tokenization_fails_alike_on_every_process(runs):
    (one,), (a, b) = runs
    # builds counts this process's build calls: the good entry's (main only), then the failing one
    assert one["failed_tokenization"] == {"error": "no such source", "builds": 2}
    assert a["failed_tokenization"] == {"error": "no such source", "builds": 2}
    assert b["failed_tokenization"] == {"error": "no such source", "builds": 1}  # released, it tried itself


def test_reference_pass_is_split_and_equals_one_process(runs):
    (one,), (a, b) = runs
    n = one["reference"]["n"]
    assert n == 20 and one["reference"]["pairs_forwarded"] == n and not one["reference"]["hit"]
    # each process forwarded a part, together every pair once
    assert 0 < a["reference"]["pairs_forwarded"] < n and 0 < b["reference"]["pairs_forwarded"] < n
    assert a["reference"]["pairs_forwarded"] + b["reference"]["pairs_forwarded"] == n
    for side in ("chosen", "rejected"):
        assert a["reference"][side] == b["reference"][side] == one["reference"][side]  # exact
    for r in (one, a, b):
        assert r["reference"]["second_hit"] and r["reference"]["second_forwarded"] == 0
        assert r["reference"]["second_equal"]


def test_eval_generation_is_split_and_equals_one_process(runs):
    (one,), (a, b) = runs
    n = one["eval"]["n"]
    assert n == 24 and one["eval"]["prompts_generated"] == n
    # 24 prompts in batches of 5: 5 batches, 3 on the first process (15 prompts), 2 on the other (9)
    assert (a["eval"]["prompts_generated"], b["eval"]["prompts_generated"]) == (15, 9)
    assert a["eval"]["responses"] == b["eval"]["responses"] == one["eval"]["responses"]
    assert a["eval"]["scores"] == b["eval"]["scores"] == one["eval"]["scores"]
    assert a["eval"]["summary"] == b["eval"]["summary"] == one["eval"]["summary"]
    assert any(one["eval"]["responses"])  # the model answered something


# lr 1e-12: Adam moves a weight by ~lr, far below half an fp32 ulp of the tiny base's
# weights, so both runs evaluate the base's own weights and their responses must agree
# token for token (a real step would differ between 1 and 2 processes in the last bits).
RECIPE = """
output_dir: {out}
seed: 0
model: {{name_or_path: {base}}}
eval: {{data: {eval}, limit: 10, max_new_tokens: 24, batch_size: 3}}
stages:
  sft:
    train_data: [{{path: {data}, amount: 8}}]
    per_device_batch_size: 2
    max_steps: 1
    learning_rate: 1.0e-12
    max_length: 256
"""


@pytest.mark.timeout(900)
def test_recipe_eval_on_two_processes_equals_one_process(tmp_path):
    runs = []
    for config, nproc in ((None, 1), ("ddp.yaml", 2)):
        out = tmp_path / f"run{nproc}"
        recipe = tmp_path / f"recipe{nproc}.yaml"
        recipe.write_text(RECIPE.format(out=out, base=TINY_BASE, eval=ROOT / "data/tiny/eval.jsonl",
                                        data=ROOT / "data/tiny/sft_train.jsonl"))
        launch(config, nproc, ["run", recipe], tmp_path / f"cache{nproc}")
        runs.append(out / "sft")
    one, two = runs
    summary = json.loads((one / "eval.json").read_text())
    assert summary["n"] == 10 and json.loads((two / "eval.json").read_text()) == summary
    rows = [(run / "eval_responses.jsonl").read_text().splitlines() for run in (one, two)]
    assert len(rows[0]) == 10 and rows[0] == rows[1]
    assert any(json.loads(r)["response"] for r in rows[0])
