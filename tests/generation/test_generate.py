"""``posttrain generate`` through the real command: samples from the tiny OLMo-2 with each
engine, scored by a verifier whose verdict the test can recompute, and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MAX_LEN = 14  # characters; the verifier below passes responses up to this long

VERIFIER = '''
def short(response, ground_truth, prompt=None):
    return float(len(response) <= int(ground_truth))
'''


def posttrain_cmd() -> list[str]:
    """The installed console script (its entry point is ``__main__``-guarded, which the vLLM
    engine's own process needs)."""
    exe = Path(sys.executable).parent / "posttrain"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "posttrain.cli"]


def _generate(*args, cwd=None, timeout=600):
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", PYTHONPATH=str(cwd or ""))
    return subprocess.run(posttrain_cmd() + ["generate", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


@pytest.fixture
def prompts(tmp_path):
    (tmp_path / "lenverifier.py").write_text(VERIFIER)
    rows = [
        {"prompt": "What is 2 + 3?", "dataset": "lenverifier:short", "ground_truth": MAX_LEN, "id": "a"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add 4 and 9."}],
         "dataset": "lenverifier:short", "ground_truth": MAX_LEN, "id": "b"},
        {"prompt": "Subtract 7 from 35.", "dataset": ["lenverifier:short"], "ground_truth": [MAX_LEN], "id": "c"},
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def _check_samples(out: Path, rows: list[dict], n: int, max_new_tokens: int) -> list[dict]:
    samples = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(samples) == len(rows) * n
    for i, s in enumerate(samples):
        row = rows[i // n]
        assert {k: s[k] for k in row} == row  # the prompt row's columns, unchanged
        assert s["sample_index"] == i % n
        assert isinstance(s["response"], str)
        assert s["finish_reason"] in ("stop", "length")
        assert 1 <= s["num_tokens"] <= max_new_tokens
        assert (s["num_tokens"] == max_new_tokens) or s["finish_reason"] == "stop"
        if s["finish_reason"] == "length":
            assert s["num_tokens"] == max_new_tokens
    return samples


def _check_scores_and_summary(samples: list[dict], stdout: str, n: int) -> None:
    for s in samples:  # the verifier's verdict, recomputed here
        assert s["score"] == float(len(s["response"]) <= MAX_LEN) and s["reason"] is None
    counts = [sum(s["score"] == 1.0 for s in samples[i:i + n]) for i in range(0, len(samples), n)]
    summary = json.loads(stdout.strip().splitlines()[-1])
    # pass@1 is the mean of c/n; pass@n is the share of prompts with at least one pass
    assert summary["pass@1"] == pytest.approx(sum(c / n for c in counts) / len(counts), abs=1e-6)
    assert summary[f"pass@{n}"] == pytest.approx(sum(c > 0 for c in counts) / len(counts), abs=1e-6)
    assert summary["per_verifier"]["lenverifier:short"]["prompts"] == len(counts)


def test_generate_hf_scored_and_seeded(tiny_model_dir, prompts, tmp_path):
    from posttrain.generation import (generate_samples, load_prompt_rows, load_tokenizer, make_generation_engine,
                                      make_sampling, tokenize_prompts)

    path, rows = prompts
    n, max_new = 4, 8
    r = _generate(tiny_model_dir, "--data", path, "-n", n, "--max-new-tokens", max_new, "--engine", "hf", "--score",
                  "--json", "--workers", 1, "--batch-size", 2, "--seed", 5, "-o", tmp_path / "s5.jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    samples = _check_samples(tmp_path / "s5.jsonl", rows, n, max_new)
    _check_scores_and_summary(samples, r.stdout, n)
    assert "pass@1" in r.stdout and "lenverifier:short" in r.stdout
    assert len({s["response"] for s in samples[:n]}) > 1  # sampled, not greedy

    # The same seed in another process gives the same samples; another seed, others.
    tokenizer = load_tokenizer(str(tiny_model_dir))
    loaded, turns = load_prompt_rows(str(path), score=False)
    ids = tokenize_prompts(tokenizer, turns, str(path))
    engine = make_generation_engine("hf", str(tiny_model_dir), tokenizer, dtype="float32", device="cpu")

    def responses(seed):
        sampling = make_sampling(max_new_tokens=max_new, temperature=1.0, top_p=1.0, top_k=0, seed=seed,
                                 tokenizer=tokenizer)
        out = generate_samples(engine, loaded, ids, turns, n=n, sampling=sampling, batch_size=2, progress=False)
        return [(s["response"], s["finish_reason"], s["num_tokens"]) for s in out]

    assert responses(5) == [(s["response"], s["finish_reason"], s["num_tokens"]) for s in samples]
    assert responses(6) != responses(5)


def test_generate_vllm_for_real_and_seeded(tiny_model_dir, prompts, tmp_path):
    """vLLM's engine in its own process, started by the real console script."""
    path, rows = prompts
    n, max_new = 4, 8
    args = [tiny_model_dir, "--data", path, "-n", n, "--max-new-tokens", max_new, "--engine", "vllm", "--score",
            "--json", "--workers", 1, "--seed", 5]
    r1 = _generate(*args, "-o", tmp_path / "a.jsonl", cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr[-3000:]
    samples = _check_samples(tmp_path / "a.jsonl", rows, n, max_new)
    _check_scores_and_summary(samples, r1.stdout, n)
    assert len({s["response"] for s in samples[:n]}) > 1
    r2 = _generate(*args, "-o", tmp_path / "b.jsonl", cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert (tmp_path / "b.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()


def test_generate_bad_input_is_one_line_before_any_model_loads(tiny_model_dir, prompts, tmp_path, capsys):
    from posttrain.cli import main

    path, _ = prompts
    out = tmp_path / "out.jsonl"

    def err(*args):
        # In-process through the command's own entry point (one subprocess case below).
        assert main(["generate", *map(str, args)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("posttrain generate: error: "), lines
        return lines[0].removeprefix("posttrain generate: error: ")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "dataset": "no_such_verifier", "ground_truth": "1"}\n')
    assert "no_such_verifier" in err(tiny_model_dir, "--data", bad, "-o", out, "--score")
    bad.write_text('{"prompt": "x", "ground_truth": "1"}\n')
    assert err(tiny_model_dir, "--data", bad, "-o", out, "--score").endswith("row 0: missing `dataset` (needed by --score)")
    bad.write_text('{"prompt": "x", "dataset": ["gsm8k", "f1"], "ground_truth": "1"}\n')
    assert err(tiny_model_dir, "--data", bad, "-o", out, "--score").endswith(
        "row 0: 'dataset' has 2 names but 'ground_truth' has 1 values")
    bad.write_text('{"text": "x"}\n')
    assert err(tiny_model_dir, "--data", bad, "-o", out).endswith("row 0: needs `messages` (prompt turns) or `prompt`")
    assert err(tiny_model_dir, "--data", tmp_path / "none.jsonl", "-o", out).startswith("cannot read")
    assert err(tiny_model_dir, "--data", path, "-o", out, "-n", 0) == "-n must be at least 1, got 0"
    assert err(tiny_model_dir, "--data", path, "-o", out, "--top-p", 0) == "--top-p must be in (0, 1], got 0.0"
    assert err(tiny_model_dir, "--data", path, "-o", out, "--temperature", -1).startswith("--temperature")
    assert "does not exist" in err(tiny_model_dir, "--data", path, "-o", tmp_path / "no" / "out.jsonl")
    assert "not a model folder" in err(tmp_path / "nomodel", "--data", path, "-o", out)
    assert not out.exists()
    # The installed command: exit status 2 and one line, no traceback.
    bad.write_text('{"prompt": "x", "dataset": "gsm8k", "ground_truth": "1"}\nnot json\n')
    r = _generate(tiny_model_dir, "--data", bad, "-o", out, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr == f"posttrain generate: error: {bad}: line 2: bad JSON (Expecting value)\n"
