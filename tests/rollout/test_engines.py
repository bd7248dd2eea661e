"""Both rollout engines against the same checks, on the real tiny OLMo-2: sampling
shapes, finish reasons, seeded reproducibility, log-probs against the trainer's, and
weight sync (with the stale-engine counter-test). Then what is particular to vLLM: the
trainer's transformers classes and environment stay untouched, and no engine process
outlives ``close()`` or a killed owner.

One vLLM engine serves the whole module (each start costs ~20-40 s on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import torch

from posttrain.rollout import SamplingConfig, logprob_mismatch, make_engine, policy_weights, rollout_mismatch
from rollout_helpers import PROMPTS, greedy_reference, olmo2_surface, optimizer_step

# fp32 tolerances on |engine log-prob - trainer log-prob| (measured: ~2e-6 for both)
TOL = {"hf": 1e-5, "vllm": 1e-4}
# One AdamW step at this rate moves the tiny model's log-probs by ~1 nat (measured), far
# beyond either tolerance: the stale-engine counter-test needs > 100x the vLLM tolerance.
LR = 1e-2
STALE_MIN = 100 * TOL["vllm"]


def _alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir, tokenizer):
    """The module's vLLM engine, with the trainer process's state from before it started.
    Closing it must leave none of its processes running."""
    before = {"env": dict(os.environ), "surface": olmo2_surface()}
    engine = make_engine("vllm", tiny_model_dir, tokenizer)
    yield engine, before
    pids, sync_dir = list(engine.engine_pids), engine._sync_dir
    engine.close()
    assert not _alive(pids), "vLLM engine processes still running after close()"
    assert not sync_dir.exists()


@pytest.fixture(scope="module", params=["hf", "vllm"])
def engine(request, tiny_model_dir, tokenizer):
    if request.param == "vllm":
        yield request.getfixturevalue("vllm_engine")[0]
        return
    engine = make_engine("hf", tiny_model_dir, tokenizer)  # its own copy: sync is real
    yield engine
    engine.close()


def _sync(engine, policy):
    engine.update_weights(policy_weights(policy.model))


# ---------------------------------------------------------------------------- sampling
def test_sampling_shapes(engine, tokenizer):
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0, seed=3)
    r = engine.generate(PROMPTS, 4, sampling)
    assert len(r) == 12 and r.prompt_index == [0] * 4 + [1] * 4 + [2] * 4
    assert [len(t) for t in r.token_ids] == [12] * 12  # no stop tokens: every sample runs to the limit
    assert [len(lp) for lp in r.logprobs] == [12] * 12
    assert r.finish_reasons == ["length"] * 12
    assert all(0 <= t < tokenizer.vocab_size + 8 for ts in r.token_ids for t in ts)
    assert all(lp <= 0 for lps in r.logprobs for lp in lps)
    assert r.texts == tokenizer.batch_decode(r.token_ids, skip_special_tokens=True)
    assert r.num_tokens == 144 and r.extra["tokens"] == 144 and r.extra["generate_s"] > 0
    # n samples of one prompt are not copies of each other
    assert len({tuple(t) for t in r.token_ids[:4]}) > 1


def test_finish_reasons_stop_and_length(engine):
    greedy = SamplingConfig(max_new_tokens=10, temperature=0.0)
    free = engine.generate(PROMPTS, 1, greedy)
    assert free.finish_reasons == ["length"] * 3
    # Stop on the 5th greedy token of prompt 0: greedy decoding must now end right at its
    # first occurrence, with that token kept and finish reason "stop".
    stop = free.token_ids[0][4]
    first = free.token_ids[0].index(stop)
    r = engine.generate(PROMPTS, 2, SamplingConfig(max_new_tokens=10, temperature=0.0, stop_token_ids=(stop,)))
    assert r.token_ids[0] == free.token_ids[0][: first + 1] and r.finish_reasons[0] == "stop"
    for toks, reason, lps in zip(r.token_ids, r.finish_reasons, r.logprobs):
        assert len(lps) == len(toks)
        if reason == "stop":
            assert toks[-1] == stop and stop not in toks[:-1]
        else:
            assert len(toks) == 10 and stop not in toks
    # Sampling with half the vocabulary as stop tokens: samples end at their first stop
    # token (12 tokens without one has probability ~2^-12 each).
    stops = tuple(range(0, 512, 2))
    r = engine.generate(PROMPTS, 3, SamplingConfig(max_new_tokens=12, temperature=1.0, stop_token_ids=stops, seed=1))
    assert "stop" in r.finish_reasons
    for toks, reason in zip(r.token_ids, r.finish_reasons):
        in_stop = [t % 2 == 0 for t in toks]
        if reason == "stop":
            assert in_stop[-1] and not any(in_stop[:-1])
        else:
            assert len(toks) == 12 and not any(in_stop)


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(engine):
    a = SamplingConfig(max_new_tokens=8, temperature=1.0, seed=11)
    b = SamplingConfig(max_new_tokens=8, temperature=1.0, seed=12)
    state = torch.get_rng_state()
    first = engine.generate(PROMPTS, 3, a)
    other = engine.generate(PROMPTS, 3, b)
    again = engine.generate(PROMPTS, 3, a)
    assert torch.equal(torch.get_rng_state(), state), "a seeded call moved the caller's global RNG stream"
    assert again.token_ids == first.token_ids
    assert logprob_mismatch(again.logprobs, first.logprobs).max < 1e-6
    assert other.token_ids != first.token_ids
    # Different prompts do not share noise (a seed per prompt): their samples differ.
    assert first.token_ids[0] != first.token_ids[3]


# ---------------------------------------------------------------------------- log-probs
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_logprobs_match_the_trainer(engine, trainer, temperature):
    _sync(engine, trainer)
    sampling = SamplingConfig(max_new_tokens=16, temperature=temperature, seed=5)
    r = engine.generate(PROMPTS, 2, sampling)
    m = rollout_mismatch(trainer.model, PROMPTS, r, sampling, trainer.tokenizer.pad_token_id)
    assert m.tokens == r.num_tokens == 96
    assert m.max <= TOL[engine.kind], m


def test_top_k_logprobs_are_the_truncated_distribution(engine, trainer):
    """With top-k on, both engines report the distribution that sampled: the tempered
    softmax renormalised over the k most likely tokens (computed here by hand from the
    trainer's full logits)."""
    _sync(engine, trainer)
    k, temperature = 20, 0.8
    r = engine.generate(PROMPTS, 2, SamplingConfig(max_new_tokens=10, temperature=temperature, top_k=k, seed=2))
    worst = 0.0
    for i, toks, lps in zip(r.prompt_index, r.token_ids, r.logprobs):
        with torch.no_grad():
            logits = trainer.model(torch.tensor([PROMPTS[i] + toks])).logits[0, len(PROMPTS[i]) - 1 : -1] / temperature
        kth = logits.topk(k, dim=-1).values[:, -1:]
        truncated = torch.log_softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)
        want = truncated.gather(-1, torch.tensor(toks)[:, None])[:, 0]
        assert torch.isfinite(want).all(), "a sampled token lies outside the top-k"
        worst = max(worst, (torch.tensor(lps) - want).abs().max().item())
    assert worst <= TOL[engine.kind], worst


# ---------------------------------------------------------------------------- weight sync
def test_weight_sync_after_an_optimizer_step(engine, trainer):
    _sync(engine, trainer)
    optimizer_step(trainer, lr=LR)
    _sync(engine, trainer)
    greedy = SamplingConfig(max_new_tokens=12, temperature=0.0)
    r = engine.generate(PROMPTS, 1, greedy)
    assert r.token_ids == greedy_reference(trainer.model, PROMPTS, 12)
    m = rollout_mismatch(trainer.model, PROMPTS, r, greedy, trainer.tokenizer.pad_token_id)
    assert m.max <= TOL[engine.kind], m
    assert engine.weight_syncs >= 2


def test_stale_engine_differs_far_beyond_the_tolerance(engine, trainer):
    """The counter-test: without ``update_weights`` the same comparison fails by a wide
    margin, so the equality above is evidence of the sync."""
    _sync(engine, trainer)
    optimizer_step(trainer, lr=LR)
    greedy = SamplingConfig(max_new_tokens=12, temperature=0.0)
    r = engine.generate(PROMPTS, 1, greedy)
    m = rollout_mismatch(trainer.model, PROMPTS, r, greedy, trainer.tokenizer.pad_token_id)
    assert m.max > STALE_MIN, m


# ---------------------------------------------------------------------------- vLLM only
def test_vllm_model_loads_outside_the_trainer_process(vllm_engine, trainer):
    """vLLM's Transformers backend patches transformers' OLMo 2 classes where it loads
    the model; after starting the engine (and sampling, and a weight sync) the trainer's
    classes, attention registry and environment are as they were."""
    engine, before = vllm_engine
    _sync(engine, trainer)
    engine.generate(PROMPTS, 2, SamplingConfig(max_new_tokens=4, seed=0))
    assert engine.engine_pids and os.getpid() not in engine.engine_pids
    assert olmo2_surface() == before["surface"]
    assert "vllm" not in olmo2_surface()["attention"]
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    assert env == {k: v for k, v in before["env"].items() if k != "PYTEST_CURRENT_TEST"}


def test_the_surface_check_sees_vllms_patch(tmp_path):
    """The check above can fail: applying vLLM's own torch.compile decoration to
    ``Olmo2Model`` (what its backend does in the process that loads the model) changes
    the surface. Run in a child process, so this process stays clean."""
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, "tests/rollout")
        from rollout_helpers import olmo2_surface
        before = olmo2_surface()
        from vllm.compilation.decorators import support_torch_compile
        import transformers.models.olmo2.modeling_olmo2 as m
        support_torch_compile(m.Olmo2Model)
        print("CHANGED" if olmo2_surface() != before else "SAME")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                         env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"})
    assert out.stdout.strip().splitlines()[-1:] == ["CHANGED"], out.stderr[-2000:]


def test_no_engine_process_outlives_a_killed_owner(tiny_model_dir, tmp_path):
    """The owner is SIGKILLed right after starting an engine: nothing of the engine may
    keep running, and its weight-sync folder is removed."""
    script = textwrap.dedent(f"""
        import json, os, signal
        from transformers import AutoTokenizer
        from posttrain.rollout import make_engine

        if __name__ == "__main__":
            engine = make_engine("vllm", {str(tiny_model_dir)!r}, AutoTokenizer.from_pretrained({str(tiny_model_dir)!r}))
            print(json.dumps({{"pids": engine.engine_pids, "dir": str(engine._sync_dir)}}), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    path = tmp_path / "owner.py"
    path.write_text(script)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=400,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == -9, out.stderr[-2000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["pids"], "no engine process was recorded"
    deadline = time.monotonic() + 30
    while _alive(info["pids"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(info["pids"]), "engine processes outlived their killed owner"
    assert not os.path.exists(info["dir"])
