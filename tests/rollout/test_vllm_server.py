"""The ``vllm_server`` engine against a real server process on this machine (a free port,
vLLM on the CPU): its log-probs match the trainer's, weights pushed over HTTP in several
chunks reach it (with the stale-server counter-test), a client killed in the middle of a
request or of a weight upload leaves the server serving and the half-sent weights
unapplied, and SIGTERM shuts the server down with every vLLM process it started.

One server serves the whole module (a vLLM start costs ~20-40 s on 2 cores)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from posttrain.errors import PosttrainError
from posttrain.rollout import SamplingConfig, make_engine, policy_weights, rollout_mismatch
from posttrain.rollout.vllm_server import READY, chunked
from rollout_helpers import PROMPTS, greedy_reference, optimizer_step

TOL = 1e-4  # as the local vllm engine (tests/rollout/test_engines.py): measured ~2e-6
LR = 1e-2  # moves the tiny model's log-probs by ~1 nat: far beyond TOL
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """``python -m posttrain.rollout.vllm_server serve`` on a port the system picks. At
    the end: SIGTERM, a clean exit, and none of its processes (vLLM's engine core, the
    reapers) left running."""
    pytest.importorskip("vllm")
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "posttrain.rollout.vllm_server", "serve", str(tiny_model_dir),
                                 "--port", "0"], stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline()  # blocks until the ready line, or EOF if it died
    assert line.startswith(READY), f"server did not start: {line!r}\n{log.read_text()[-3000:]}"
    url = line.split()[-1]
    family = psutil.Process(proc.pid).children(recursive=True)
    yield url, proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    deadline = time.monotonic() + 20
    while _alive(family) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(family), f"left running after SIGTERM: {[p.cmdline() for p in _alive(family)]}"


def _alive(procs) -> list:
    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture
def client(server, tokenizer):
    # 2 MiB chunks: the tiny model's 13.6 MB of fp32 weights go in 7 uploads
    return make_engine("vllm_server", None, tokenizer, server_url=server[0], chunk_bytes=2 << 20)


def test_chunks_bound_their_size_and_keep_every_tensor():
    import torch

    w = torch.ones(4, 4)  # 64 bytes, tied to "b"
    named = [("a", torch.zeros(8)), ("b", w), ("c", w), ("d", torch.zeros(100))]  # 32, 64, 64, 400 bytes
    chunks = list(chunked(named, 100))
    # a (32) + b (64) = 96 <= 100; c would make 160 -> new chunk; d (400) alone
    assert [sorted(c) for c in chunks] == [["a", "b"], ["c"], ["d"]]
    shared = list(chunked([("b", w), ("c", w)], 1000))[0]
    assert shared["b"].data_ptr() != shared["c"].data_ptr()  # tied weights copied within a chunk
    # in the server's dtype: floats cast (bf16 halves the bytes: 8 x 2 = 16), integers kept
    cast = list(chunked([("a", torch.full((8,), 1.00390625)), ("i", torch.arange(3))], 16, torch.bfloat16))
    assert [sorted(c) for c in cast] == [["a"], ["i"]] and cast[0]["a"].dtype == torch.bfloat16
    assert cast[0]["a"][0].item() == 1.0 and cast[1]["i"].dtype == torch.int64  # 1 + 2^-8 rounds to even: 1


def test_factory_needs_a_server_url(tokenizer):
    with pytest.raises(PosttrainError, match="server_url"):
        make_engine("vllm_server", None, tokenizer)


def test_a_recipe_without_the_server_url_fails_naming_the_field(tiny_model_dir):
    from posttrain.recipe.load import validate_recipe

    stage = {"type": "rlvr", "engine": "vllm_server",
             "train_data": [{"path": str(ROOT / "data/tiny/rlvr_train.jsonl")}]}
    with pytest.raises(PosttrainError) as e:
        validate_recipe({"output_dir": "/tmp/unused", "model": {"name_or_path": str(tiny_model_dir)},
                         "stages": {"rlvr": stage}})
    assert str(e.value).startswith("stages.rlvr: vllm.server_url: engine vllm_server needs the server's address")


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_logprobs_match_the_trainer(client, trainer, temperature):
    client.update_weights(policy_weights(trainer.model))
    sampling = SamplingConfig(max_new_tokens=16, temperature=temperature, seed=5)
    r = client.generate(PROMPTS, 2, sampling)
    assert r.prompt_index == [0, 0, 1, 1, 2, 2] and r.texts == trainer.tokenizer.batch_decode(
        r.token_ids, skip_special_tokens=True)
    m = rollout_mismatch(trainer.model, PROMPTS, r, sampling, trainer.tokenizer.pad_token_id)
    assert m.tokens == r.num_tokens == 96
    assert m.max <= TOL, m


def test_weights_pushed_over_http_reach_the_server(client, trainer):
    client.update_weights(policy_weights(trainer.model))
    before = client.weight_syncs
    optimizer_step(trainer, lr=LR)
    client.update_weights(policy_weights(trainer.model))
    assert client.weight_syncs == before + 1
    greedy = SamplingConfig(max_new_tokens=12, temperature=0.0)
    r = client.generate(PROMPTS, 1, greedy)
    assert r.token_ids == greedy_reference(trainer.model, PROMPTS, 12)
    m = rollout_mismatch(trainer.model, PROMPTS, r, greedy, trainer.tokenizer.pad_token_id)
    assert m.max <= TOL, m


def test_stale_server_differs_far_beyond_the_tolerance(client, trainer):
    """The counter-test: without the push the same comparison fails by a wide margin."""
    client.update_weights(policy_weights(trainer.model))
    optimizer_step(trainer, lr=LR)
    greedy = SamplingConfig(max_new_tokens=12, temperature=0.0)
    m = rollout_mismatch(trainer.model, PROMPTS, client.generate(PROMPTS, 1, greedy), greedy,
                         trainer.tokenizer.pad_token_id)
    assert m.max > 100 * TOL, m


def test_bad_requests_answer_one_line(client):
    with pytest.raises(ValueError, match="max_model_len"):
        client.generate([[0] * 10], 1, SamplingConfig(max_new_tokens=client.max_model_len))


_KILLED_CLIENT = textwrap.dedent("""
    import socket, sys, time, urllib.request
    from posttrain.rollout import SamplingConfig, make_engine
    from posttrain.rollout.vllm_server import VLLMServerEngine

    url, what = sys.argv[1], sys.argv[2]
    host, port = url.removeprefix("http://").split(":")
    if what == "upload":
        # an update begun, one chunk half sent, then the process dies
        engine = VLLMServerEngine(url, None)
        update = engine._call("POST", "/weights/begin", b"")["update"]
        s = socket.create_connection((host, int(port)))
        s.sendall((f"POST /weights/chunk?update={update}&index=0 HTTP/1.1\\r\\nHost: x\\r\\n"
                   "Content-Length: 10000000\\r\\n\\r\\n").encode() + b"\\0" * 4096)
    else:
        # a long generation in flight when the process dies
        s = socket.create_connection((host, int(port)))
        body = b'{"prompt_token_ids": [[0, 5]], "n": 8, "sampling": {"max_new_tokens": 200, "temperature": 1.0}}'
        s.sendall(b"POST /generate HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
    print("sent", flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("what", ["upload", "generate"])
def test_a_killed_client_leaves_the_server_serving(client, trainer, server, what):
    client.update_weights(policy_weights(trainer.model))
    killed = subprocess.Popen([sys.executable, "-c", _KILLED_CLIENT, server[0], what], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    assert killed.stdout.readline().strip() == "sent"
    time.sleep(0.5)
    killed.kill()
    killed.wait()
    # The server still answers, with the weights of the last complete update (the killed
    # client's half-sent chunk is never applied).
    greedy = SamplingConfig(max_new_tokens=12, temperature=0.0)
    r = client.generate(PROMPTS, 1, greedy)
    m = rollout_mismatch(trainer.model, PROMPTS, r, greedy, trainer.tokenizer.pad_token_id)
    assert m.max <= TOL, m
    optimizer_step(trainer, lr=LR)
    client.update_weights(policy_weights(trainer.model))  # a new update supersedes the abandoned one
    r = client.generate(PROMPTS, 1, greedy)
    assert r.token_ids == greedy_reference(trainer.model, PROMPTS, 12)
    assert server[1].poll() is None
