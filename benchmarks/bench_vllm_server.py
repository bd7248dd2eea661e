"""The ``vllm_server`` engine against the local ``vllm`` engine, side by side in one run:
seconds of one weight sync (HTTP upload of safetensors chunks + ``reload_weights`` on the
server, against a ``/dev/shm`` file + ``reload_weights`` locally) and of one ``generate``
call, on the same model and the same request.

    flock /tmp/posttrain-heavy.lock env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_vllm_server.py

Model: the shipped tiny base (``posttrain/models/tiny_base``, 3.4M parameters, fp32).
Server: ``python -m posttrain.rollout.vllm_server serve`` on localhost, a free port.
Request: 12 prompts x 4 samples x 32 tokens at temperature 1. One untimed warm-up each,
then ``--rounds`` rounds alternating the two engines; medians, and the server/local
ratios (the number to compare across machines). Localhost only: a network between the
trainer and the server adds its transfer time to the sync.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    from transformers import AutoTokenizer

    from posttrain.policy import Policy, prepare_tokenizer
    from posttrain.rollout import SamplingConfig, make_engine, policy_weights
    from posttrain.rollout.vllm_server import READY

    base = ROOT / "posttrain/models/tiny_base"
    tok = AutoTokenizer.from_pretrained(base)
    prepare_tokenizer(tok)
    policy = Policy.load(base, device="cpu", dtype="float32")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    server = subprocess.Popen([sys.executable, "-m", "posttrain.rollout.vllm_server", "serve", str(base), "--port", "0"],
                              stdout=subprocess.PIPE, text=True, env=env)
    line = server.stdout.readline()
    if not line.startswith(READY):
        raise SystemExit(f"server did not start: {line!r}")
    engines = {"vllm": make_engine("vllm", base, tok),
               "vllm_server": make_engine("vllm_server", None, tok, server_url=line.split()[-1])}
    prompts = [[0, 17, 42, 99, 310, 7, 256], [0, 5], [0, 400, 401, 402, 11, 12, 13]] * 4
    sampling = SamplingConfig(max_new_tokens=32, temperature=1.0, seed=0)
    times: dict = {k: {"sync_s": [], "generate_s": []} for k in engines}
    try:
        for e in engines.values():  # warm-up
            e.update_weights(policy_weights(policy.model))
            e.generate(prompts, 4, sampling)
        for _ in range(args.rounds):
            for name, e in engines.items():
                t = time.perf_counter()
                e.update_weights(policy_weights(policy.model))
                times[name]["sync_s"].append(time.perf_counter() - t)
                t = time.perf_counter()
                e.generate(prompts, 4, sampling)
                times[name]["generate_s"].append(time.perf_counter() - t)
    finally:
        engines["vllm"].close()
        server.terminate()
        server.wait(60)
    out: dict = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in times.items()}
    for m in ("sync_s", "generate_s"):
        out[f"{m}_ratio_server_over_local"] = out["vllm_server"][m] / out["vllm"][m]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":  # vLLM's engine process starts with spawn
    main()
