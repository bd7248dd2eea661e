"""The ``vllm`` rollout engine: a vLLM ``LLM`` on the trainer's machine, its model in
vLLM's own engine-core process.

Process layout. vLLM V1 runs the model in an engine-core process (multiprocessing, the
default; on CPU it is started with ``spawn``, so scripts that start an engine need the
usual ``if __name__ == "__main__":`` guard). That is a requirement here, not a detail:
vLLM 0.32 serves OLMo 2 through its Transformers backend, which patches transformers'
OLMo 2 classes (``__init__``/``__call__`` and base classes, for torch.compile) in the
process that loads the model. Loaded in the trainer's process, the trainer's own
``Olmo2Model`` would change under it. The trainer's process only holds the front end.
vLLM's CPU platform also writes a few environment variables while it configures the
engine; they are restored once the engine is up, so the trainer's environment is as it
was. ``tests/rollout/test_engines.py`` checks both.

Log-probs are vLLM's ``processed_logprobs``: ``log_softmax`` after temperature, top-k
and top-p, i.e. ``log_softmax(logits / temperature)`` when top-k/top-p are off (the RL
setting), the same quantity the ``hf`` engine reports and a trainer recomputes.

Weight sync. On CPU the named tensors are written as one safetensors file into a folder
in ``/dev/shm`` (memory, no disk) and the engine reloads them in place with
``collective_rpc("reload_weights", weights_path=..., is_checkpoint_format=True)``;
tensors passed straight through ``collective_rpc`` do not survive its serialisation. On
a GPU the engine uses vLLM 0.32's weight-transfer API with the **CUDA IPC** backend
(``weight_transfer_config={"backend": "ipc"}``, trainer side
``IPCTrainerWeightTransferEngine``): the engine shares the trainer's GPU, so the worker
maps the trainer's tensors through IPC handles instead of copying them over NCCL (which
needs separate GPUs). That path is written against vLLM 0.32's source and has NOT been
run here (no GPU in the session that wrote it). Either way the prefix cache is reset
after a sync: its KV entries were computed with the old weights.

Memory: on a GPU ``gpu_memory_utilization`` bounds the engine's share of the device and
``sleep()``/``wake()`` use vLLM's sleep mode (weights offloaded to CPU, KV cache freed)
so the trainer gets the memory between rollouts. On CPU, sleep mode does not exist and
both are no-ops; the KV cache takes ``kv_cache_gib`` GiB (else ``VLLM_CPU_KVCACHE_SPACE``,
else 1), set for the engine's processes only.

Quiet and clean: vLLM's INFO logs and its children's warnings are off unless
``quiet=False``. ``close()`` (also run at exit) shuts the engine down; a
:class:`~posttrain.rollout.reaper.Reaper` kills the engine's processes and removes the
sync folder if the trainer dies without closing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from posttrain.rollout.base import Rollouts, SamplingConfig
from posttrain.rollout.common import check_request
from posttrain.rollout.reaper import Reaper

log = logging.getLogger(__name__)


@contextmanager
def _engine_environment(quiet: bool, on_cpu: bool, gpu_ipc: bool, kv_cache_gib: int | None):
    """Environment for vLLM's start: its processes inherit it, and whatever vLLM writes
    into ``os.environ`` meanwhile is undone afterwards."""
    saved = dict(os.environ)
    if on_cpu:
        if kv_cache_gib is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_cache_gib))
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if gpu_ipc:
        # The worker decodes the IPC handles, which travel pickled (see _RPCClient).
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    if quiet:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _request_seed(seed: int, prompt_index: int) -> int:
    """Seed of one prompt's request. vLLM gives the i-th of its n samples ``seed + i``;
    hashing (seed, prompt) keeps different prompts' noise independent (the CPU sampler's
    noise depends on the seed and position only, so equal seeds would correlate
    samples of different prompts)."""
    return int(np.random.SeedSequence([seed, prompt_index]).generate_state(1, dtype=np.uint32)[0]) * 1024


class VLLMEngine:
    """Rollouts from a vLLM engine in its own process. See the module docstring."""

    kind = "vllm"
    shares_weights = False

    def __init__(
        self,
        model_dir: str | Path,
        tokenizer,
        *,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.3,
        enable_sleep_mode: bool | None = None,
        torch_compile: bool = False,
        quiet: bool = True,
        kv_cache_gib: int | None = None,
        engine_kwargs: dict | None = None,
    ):
        from posttrain.policy import pick_device, pick_dtype

        self.tokenizer = tokenizer
        self.model_dir = str(model_dir)
        self.on_gpu = pick_device(None).type == "cuda"
        torch_dtype = pick_dtype(dtype, torch.device("cuda" if self.on_gpu else "cpu"))
        self.sleep_mode = self.on_gpu if enable_sleep_mode is None else (enable_sleep_mode and self.on_gpu)
        self.weight_syncs = 0
        self._closed = False
        self._ipc = None
        self._asleep = False
        self._sync_dir = Path(tempfile.mkdtemp(prefix=f"posttrain-vllm-{os.getpid()}-",
                                               dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
        kwargs = dict(
            model=self.model_dir, dtype=str(torch_dtype).removeprefix("torch."), seed=seed,
            max_model_len=max_model_len, skip_tokenizer_init=True, generation_config="vllm",
            logprobs_mode="processed_logprobs", use_tqdm_on_load=False,
        )
        if not torch_compile:
            kwargs["compilation_config"] = {"mode": 0}  # eager: starts in seconds, not a minute
        if self.on_gpu:
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=self.sleep_mode,
                          weight_transfer_config={"backend": "ipc"})
        else:
            # vLLM 0.32 on CPU crashes ("CPU Generator does not use offset") when a seeded
            # request's prompt is split over steps: schedule every prompt whole.
            kwargs.update(enable_chunked_prefill=False,
                          max_num_batched_tokens=max(8192, max_model_len or 0, self._config_max_len()))
        kwargs.update(engine_kwargs or {})
        if quiet:
            logging.getLogger("vllm").setLevel(logging.ERROR)
        import psutil

        before = {p.pid for p in psutil.Process().children(recursive=True)}
        try:
            with _engine_environment(quiet, on_cpu=not self.on_gpu, gpu_ipc=self.on_gpu, kv_cache_gib=kv_cache_gib):
                from vllm import LLM

                self.llm = LLM(**kwargs)
        except BaseException:
            shutil.rmtree(self._sync_dir, ignore_errors=True)
            raise
        started = [p for p in psutil.Process().children(recursive=True)
                   if p.pid not in before and "resource_tracker" not in " ".join(_cmdline(p))]
        self.engine_pids = [p.pid for p in started]
        self._reaper = Reaper(self.engine_pids, [str(self._sync_dir)])
        self._finalizer = weakref.finalize(self, _shutdown, self.llm, self._reaper, self._sync_dir, self.on_gpu)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def _config_max_len(self) -> int:
        """The model's context length from a local folder's config (0 when unknown)."""
        import json

        path = Path(self.model_dir) / "config.json"
        return int(json.loads(path.read_text()).get("max_position_embeddings") or 0) if path.is_file() else 0

    # ------------------------------------------------------------------ sampling
    def generate(self, prompt_token_ids: Sequence[Sequence[int]], n: int, sampling: SamplingConfig) -> Rollouts:
        from vllm import SamplingParams

        check_request(prompt_token_ids, n, sampling)
        self._check_open()
        for i, p in enumerate(prompt_token_ids):
            if len(p) + sampling.max_new_tokens > self.max_model_len:
                raise ValueError(f"prompt {i}: {len(p)} tokens + max_new_tokens {sampling.max_new_tokens} exceed "
                                 f"the engine's max_model_len {self.max_model_len}")
        start = time.perf_counter()
        base = dict(
            n=n, temperature=0.0 if sampling.greedy else sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k, max_tokens=sampling.max_new_tokens, stop_token_ids=list(sampling.stop_token_ids),
            # Stop on exactly the given tokens: not also on the model's own EOS.
            ignore_eos=True, logprobs=0, detokenize=False, skip_special_tokens=True,
        )
        # vLLM refuses n > 1 for greedy requests: send n copies of each (the prefix cache
        # computes the prompt once).
        copies = n if sampling.greedy else 1
        base["n"] = n // copies
        requests = [i for i in range(len(prompt_token_ids)) for _ in range(copies)]
        params = [SamplingParams(**base, seed=None if sampling.seed is None else _request_seed(sampling.seed, i))
                  for i in requests]
        outputs = self.llm.generate([{"prompt_token_ids": list(prompt_token_ids[i])} for i in requests], params,
                                    use_tqdm=False)
        tokens, logprobs, reasons, index = [], [], [], []
        for i, out in zip(requests, outputs):
            for c in sorted(out.outputs, key=lambda c: c.index):
                toks = list(c.token_ids)
                tokens.append(toks)
                logprobs.append([float(c.logprobs[k][t].logprob) for k, t in enumerate(toks)])
                reasons.append("stop" if c.finish_reason == "stop" else "length")
                index.append(i)
        texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        result = Rollouts(prompt_index=index, token_ids=tokens, texts=texts, logprobs=logprobs,
                          finish_reasons=reasons)  # type: ignore[arg-type]
        result.extra.update(generate_s=time.perf_counter() - start, tokens=result.num_tokens, engine="vllm")
        return result

    # ------------------------------------------------------------------ weights
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load the trainer's full weights (names as in the HF ``state_dict``) into the
        engine: CUDA IPC on a GPU, a safetensors folder in ``/dev/shm`` on CPU."""
        self._check_open()
        if self.on_gpu:
            self._update_ipc(named_tensors)
        else:
            self._update_shm(named_tensors)
        self.llm.reset_prefix_cache()
        self.weight_syncs += 1

    def _update_shm(self, named_tensors) -> None:
        from safetensors.torch import save_file

        tensors, seen = {}, set()
        for name, t in named_tensors:
            t = t.detach().to("cpu").contiguous()
            if t.data_ptr() in seen:  # tied weights: safetensors stores no shared storage
                t = t.clone()
            seen.add(t.data_ptr())
            tensors[name] = t
        tmp = self._sync_dir / "model.safetensors.partial"
        save_file(tensors, str(tmp))
        os.replace(tmp, self._sync_dir / "model.safetensors")
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(self._sync_dir),
                                                          "is_checkpoint_format": True})

    def _update_ipc(self, named_tensors) -> None:
        # Not exercised here: written against vLLM 0.32's weight-transfer source.
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo, IPCTrainerWeightTransferEngine

        if self._ipc is None:
            self._ipc_source = _tensor_source()
            self._ipc = IPCTrainerWeightTransferEngine.trainer_init(
                IPCTrainerInitInfo(rank=0, packed=True), client=_RPCClient(self.llm), source=self._ipc_source)
        self._ipc_source.tensors = [(n, t.detach()) for n, t in named_tensors]
        try:
            self._ipc.send_weights()
        finally:
            self._ipc_source.tensors = []

    # ------------------------------------------------------------------ memory
    def sleep(self) -> None:
        """GPU: free the KV cache and offload the weights to CPU (vLLM sleep mode, level
        1), so the trainer can use the memory. CPU: no-op (no sleep mode there)."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def wake(self) -> None:
        if self.sleep_mode and self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def close(self) -> None:
        """Shut the engine down and wait for its processes to end. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._finalizer()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the vLLM engine is closed")

    def __enter__(self) -> "VLLMEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _shutdown(llm, reaper: Reaper, sync_dir: Path, on_gpu: bool) -> None:
    try:
        # CPU: nothing to release gracefully, and vLLM's SIGTERM path takes >5 s there.
        llm.llm_engine.engine_core.shutdown(timeout=None if on_gpu else 1.0)
    except Exception as e:  # the engine may already be dead; the reaper still runs
        log.debug("vLLM shutdown: %s", e)
    reaper.close()
    shutil.rmtree(sync_dir, ignore_errors=True)
    import multiprocessing

    multiprocessing.active_children()  # reaps the engine process vLLM started (no zombie left)


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except Exception:
        return []


def _tensor_source():
    """A vLLM ``WeightSource`` whose ``tensors`` are set before each send."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class TensorSource(WeightSource):
        def __init__(self):
            self.tensors: list[tuple[str, torch.Tensor]] = []

        def metadata(self):
            return [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in self.tensors]

        def __iter__(self):
            return iter(list(self.tensors))

    return TensorSource()


class _RPCClient:
    """vLLM's ``VLLMWeightSyncClient`` protocol over an in-process ``LLM``: each call is
    a ``collective_rpc`` to the engine's workers. IPC handles travel pickled in
    ``ipc_handles_pickled``, as vLLM's own HTTP client sends them, because the RPC's
    serialiser does not carry the raw handle tuples."""

    def __init__(self, llm):
        self.llm = llm

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.collective_rpc("start_weight_update")

    def update_weights(self, update_info) -> None:
        self.llm.collective_rpc("update_weights", kwargs={"update_info": _pickle_handles(update_info)})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.collective_rpc("finish_weight_update")

    def shutdown_weight_transfer_engine(self) -> None:
        self.llm.collective_rpc("shutdown_weight_transfer_engine")


def _pickle_handles(update_info):
    import base64
    import pickle

    if isinstance(update_info, list):
        return [_pickle_handles(u) for u in update_info]
    if update_info.get("ipc_handles") is None:
        return update_info
    out = {k: v for k, v in update_info.items() if k != "ipc_handles"}
    out["ipc_handles_pickled"] = base64.b64encode(pickle.dumps(update_info["ipc_handles"])).decode()
    return out
