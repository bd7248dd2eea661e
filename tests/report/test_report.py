"""``posttrain report``: the run directory of a real (tiny) ``posttrain run`` becomes one
HTML page, which a real headless Chromium opens offline: no console error, no request
leaving the file, every plot drawn."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from posttrain.metrics import MetricsWriter
from posttrain.report import write_report
from posttrain.report_data import ReportError, group_panels, headline_accuracy, metric_series, read_run

ROOT = Path(__file__).resolve().parents[2]

SUMMARY_JS = ("JSON.stringify([...document.querySelectorAll('table.summary tbody tr')]"
              ".map(tr => [...tr.cells].map(c => c.textContent)))")


def _posttrain(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "posttrain.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def _write_rl_stage(stage_dir: Path) -> None:
    """An RL stage's folder, its lines written by the same MetricsWriter every stage uses,
    with the per-step metrics an RLVR stage logs (the stage itself is not in the tree yet)."""
    stage_dir.mkdir()
    with MetricsWriter(stage_dir / "metrics.jsonl") as w:
        w.log(0, **{"data/prompts": 16})
        for step in range(1, 13):
            w.log(step, loss=0.5 / step, lr=1e-6, grad_norm=float("nan") if step == 4 else 0.8,
                  entropy=1.2 - 0.05 * step, clip_fraction=0.02 * (step % 3),
                  **{"reward/mean": 4.0 + 0.4 * step, "reward/std": 3.0, "kl": 0.002 * step,
                     "response_length/mean": 40 - step, "response_length/max": 64,
                     "accuracy/gsm8k": 0.4 + 0.04 * step, "rollout_tokens_per_s": 900.0 + step})
        w.log(-1, **{"eval/accuracy": 0.875, "eval/n": 8})
    (stage_dir / "DONE").write_text(json.dumps({"seconds": 75.5}) + "\n")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """SFT then DPO on the tiny task through the real ``posttrain run`` (a few steps each,
    with the recipe's eval after each), plus an RL stage's folder."""
    root = tmp_path_factory.mktemp("report")
    recipe = {
        "output_dir": str(root / "run"),
        "seed": 0,
        "model": {"name_or_path": "tiny"},
        "stages": {
            "sft": {"train_data": [{"path": "data/tiny/sft_train.jsonl", "amount": 48}],
                    "eval_data": [{"path": "data/tiny/sft_eval.jsonl", "amount": 8}],
                    "max_steps": 4, "per_device_batch_size": 8, "max_length": 256, "learning_rate": 1e-3,
                    "logging_steps": 1, "eval_steps": 2},
            "dpo": {"train_data": [{"path": "data/tiny/dpo_train.jsonl", "amount": 16}],
                    "eval_data": [{"path": "data/tiny/dpo_eval.jsonl", "amount": 8}],
                    "max_steps": 2, "per_device_batch_size": 8, "max_length": 256,
                    "logging_steps": 1, "eval_steps": 1},
        },
        "eval": {"data": "data/tiny/eval.jsonl", "limit": 4, "max_new_tokens": 8},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    r = _posttrain("run", path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = root / "run"
    _write_rl_stage(run / "rlvr")
    return run


def test_metric_series_by_hand():
    rows = [
        {"step": 0, "time": 1.0, "data_rows": 64, "data/train/dropped/x/first_rows": "3, 9"},
        {"step": 1, "time": 2.0, "loss": 2.0, "lr": 1e-3},
        {"step": 2, "time": 3.0, "loss": 1.5, "lr": 5e-4, "grad_norm": "nan"},
        {"step": 2, "time": 4.0, "eval_loss": 1.7},
        {"step": 1, "time": 5.0, "loss": 1.9},  # resumed from step 0: step 1 logged again, later wins
        {"step": -1, "time": 6.0, "eval/accuracy": 0.5},  # the after-stage eval: not a curve
    ]
    curves, other = metric_series(rows)
    assert curves == {"data_rows": ([0], [64.0]), "loss": ([1, 2], [1.9, 1.5]), "lr": ([1, 2], [1e-3, 5e-4]),
                      "grad_norm": ([2], [None]), "eval_loss": ([2], [1.7])}
    assert other == {"data/train/dropped/x/first_rows": "3, 9"}
    panels, once = group_panels(curves)
    assert [(p.title, sorted(p.series)) for p in panels] == [
        ("Loss", ["eval_loss", "loss"]), ("Learning rate", ["lr"]), ("Gradient norm", ["grad_norm"])]
    assert once == {"data_rows": 64.0}

    rl = {k: ([1, 2], [0.0, 1.0]) for k in ("reward/mean", "kl", "response_length/mean", "rewards/accuracy",
                                             "policy/kl_coef", "clip_fraction", "entropy")}
    panels, _ = group_panels(rl)
    assert [(p.title, sorted(p.series)) for p in panels] == [
        ("Accuracy", ["rewards/accuracy"]), ("Reward", ["reward/mean"]), ("KL divergence", ["kl", "policy/kl_coef"]),
        ("Response length", ["response_length/mean"]), ("Entropy", ["entropy"]), ("clip_fraction", ["clip_fraction"])]


def test_headline_accuracy():
    assert headline_accuracy({"n": 4, "accuracy": 0.25}) == 0.25
    # Several suites: their mean, (0.5 + 0.25) / 2.
    assert headline_accuracy({"suites": {"gsm8k": {"accuracy": 0.5}, "ifeval": {"accuracy": 0.25}}}) == 0.375
    assert headline_accuracy(None) is None and headline_accuracy({"n": 3}) is None


def test_run_is_read_in_recipe_order(run_dir):
    stages = read_run(run_dir)
    assert [(s.name, s.type, s.status) for s in stages] == [
        ("sft", "sft", "done"), ("dpo", "dpo", "done"), ("rlvr", None, "done")]
    sft, dpo, rl = stages
    for s in (sft, dpo):
        done = json.loads((run_dir / s.name / "DONE").read_text())
        assert s.seconds == done["seconds"] and s.seconds > 0
        assert s.eval == json.loads((run_dir / s.name / "eval.json").read_text())
    assert rl.seconds == 75.5 and rl.eval == {"accuracy": 0.875, "n": 8}
    assert {"Loss", "Learning rate", "Gradient norm"} <= {p.title for p in sft.panels}
    assert {"Loss", "Accuracy", "Reward", "Log-probabilities"} <= {p.title for p in dpo.panels}
    assert [p.title for p in rl.panels][:7] == ["Loss", "Accuracy", "Reward", "KL divergence", "Response length",
                                                "Learning rate", "Gradient norm"]
    grad = next(p for p in rl.panels if p.title == "Gradient norm").series["grad_norm"]
    assert grad[1][3] is None and math.isclose(grad[1][0], 0.8)  # the NaN at step 4 is a gap


def test_report_opens_offline_in_chromium_with_every_plot_drawn(run_dir, browser, tmp_path):
    out = tmp_path / "report.html"
    r = _posttrain("report", run_dir, "-o", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"report written to {out}"
    page = browser.open_page(out.as_uri(), extra={"summary": SUMMARY_JS})

    assert page.errors == []
    assert [u for u in page.requests if not u.startswith(("file:", "data:", "about:"))] == []
    stages = read_run(run_dir)
    expected = 1 + sum(len(s.panels) for s in stages)  # the eval summary, then each stage's panels
    assert page.declared_plots == expected == len(page.plots)
    for plot in page.plots:
        assert plot["drawn"] and plot["traces"] >= 1 and plot["marks"] >= 1 and plot["points"] >= 1, plot
        assert plot["width"] > 200, plot
    drawn = {(p["stage"], p["panel"]) for p in page.plots}
    assert {("", "Eval accuracy after each stage"), ("sft", "Loss"), ("dpo", "Reward"), ("rlvr", "Reward"),
            ("rlvr", "KL divergence"), ("rlvr", "Response length"), ("rlvr", "Learning rate")} <= drawn

    # The table: each stage's wall time (from DONE) and eval accuracy (from eval.json).
    rows = json.loads(page.values["summary"])
    sft_eval = json.loads((run_dir / "sft" / "eval.json").read_text())
    sft_seconds = round(json.loads((run_dir / "sft" / "DONE").read_text())["seconds"])
    assert rows[0][:3] == ["sft", "sft", "done"]
    assert rows[0][3] == f"{sft_seconds // 60}:{sft_seconds % 60:02d}"
    assert rows[0][5] == f"{sft_eval['accuracy']:.2%}" and rows[0][6] == str(sft_eval["n"])
    assert rows[2] == ["rlvr", "–", "done", "1:16", "12", "87.50%", "8"]  # 75.5 s rounds to 1:16; no record
    assert rows[3][0] == "total"


def test_a_page_whose_plots_fail_is_caught(run_dir, browser, tmp_path):
    """The checks can fail: the same report without its inlined plotly.js throws on load
    and draws nothing, and the browser test sees both."""
    good = write_report(run_dir, tmp_path / "good.html").read_text()
    start = good.index('<script type="text/javascript">')
    end = good.index("</script>", start) + len("</script>")
    broken = tmp_path / "broken.html"
    broken.write_text(good[:start] + good[end:])
    page = browser.open_page(broken.as_uri(), settle_s=3)
    assert any("Plotly is not defined" in e for e in page.errors), page.errors
    assert page.plots and not any(p["drawn"] for p in page.plots)


def test_report_is_written_into_the_run_by_default(run_dir):
    out = write_report(run_dir)
    assert out == run_dir / "report.html" and out.stat().st_size > 1_000_000  # plotly.js is inside
    assert oct(out.stat().st_mode & 0o044) == oct(0o044)  # readable by others, unlike mkstemp's 0600
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".report.html")]


def test_not_a_run_is_a_one_line_error(tmp_path):
    r = _posttrain("report", tmp_path / "missing")
    assert r.returncode == 2
    assert r.stderr.strip() == f"posttrain report: error: {tmp_path / 'missing'}: no such run directory"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="^" + re.escape(f"{tmp_path / 'empty'}: not a run directory")):
        write_report(tmp_path / "empty")
