"""The ``vllm_server`` rollout engine: vLLM in a server process of its own, possibly on
another machine, reached over HTTP; the trainer pushes its weights to it over the network.

Server (on the generation machine; it holds a ``VLLMEngine``, so the model loads in vLLM's
engine-core process as with the local ``vllm`` engine)::

    python -m posttrain.rollout.vllm_server serve MODEL_DIR --host 0.0.0.0 --port 8000

It prints ``posttrain vllm_server listening on http://HOST:PORT`` once it can take
requests (``--port 0``: a port the system picks, read from that line). SIGTERM or Ctrl-C
shut it down with its engine; if it is killed outright, the engine's reaper ends vLLM's
processes and removes its ``/dev/shm`` folders.

Client (in the trainer): ``make_engine("vllm_server", None, tokenizer,
server_url="http://HOST:8000")`` implements ``RolloutEngine``.

Protocol (JSON unless said otherwise; a bad request answers 400 with ``{"error": ...}``):

- ``GET /health``: model, ``max_model_len``, ``weight_syncs``, ``dtype`` (the client sends
  weights in it).
- ``POST /generate``: ``{"prompt_token_ids", "n", "sampling"}`` (``SamplingConfig``'s
  fields) -> ``{"prompt_index", "token_ids", "logprobs", "finish_reasons", "extra"}``;
  texts are decoded by the client with its own tokenizer. JSON carries Python floats
  exactly (shortest repr), so the log-probs arrive bit for bit.
- Weight update, in three steps so a trainer that dies half-way leaves nothing applied:
  ``POST /weights/begin`` -> ``{"update": ID}`` (a new begin abandons any unfinished
  update); ``POST /weights/chunk?update=ID&index=K`` with a safetensors file as the body
  (streamed to ``/dev/shm`` on the server, never held whole in its memory); ``POST
  /weights/commit?update=ID`` reloads the chunks in place with
  ``collective_rpc("reload_weights", weights_path=..., is_checkpoint_format=True)``,
  exactly what the local engine does with its own ``/dev/shm`` file, and resets the
  prefix cache. Chunks bound the memory each side holds per request (``chunk_bytes``).

Why hand-written: vLLM 0.32's own weight-transfer API (``vllm serve`` with
``--weight-transfer-config``) has an NCCL backend that needs a GPU on both sides and a
CUDA-IPC one that needs a shared GPU; neither runs on a CPU, so neither could be tested
here. HTTP bodies of safetensors bytes run anywhere, with the stdlib only. On GPUs the
transfer goes through host memory and the network: slower than NCCL for a 7B model
(about 15 GB per sync), which is the price of a path that is tested.

Generation and weight commits take turns on the engine (one lock); several trainer
processes may share one server. Each request's connection has a socket timeout, so a
client that vanishes mid-request frees its thread; its unfinished update is abandoned.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from posttrain.errors import PosttrainError
from posttrain.rollout.base import Rollouts, SamplingConfig
from posttrain.rollout.common import check_request

log = logging.getLogger(__name__)

READY = "posttrain vllm_server listening on"


# =============================================================================== client
class VLLMServerEngine:
    """``RolloutEngine`` over a running ``vllm_server`` (module docstring). ``sleep`` and
    ``wake`` do nothing: the server's memory is not the trainer's. ``close`` leaves the
    server running (it outlives runs; stop it with SIGTERM)."""

    kind = "vllm_server"
    shares_weights = False

    def __init__(self, server_url: str, tokenizer, *, timeout: float = 3600.0, connect_timeout: float = 600.0,
                 chunk_bytes: int = 1 << 30):
        """``timeout``: seconds one request may take (a long rollout batch);
        ``connect_timeout``: how long to wait for a server that is still starting;
        ``chunk_bytes``: most bytes of weights per upload request."""
        self.url = server_url.rstrip("/")
        self.tokenizer, self.timeout, self.chunk_bytes = tokenizer, timeout, chunk_bytes
        self._closed = False
        info = self._wait_ready(connect_timeout)
        self.max_model_len = int(info["max_model_len"])
        self.weight_syncs = int(info["weight_syncs"])
        # Weights travel in the server's dtype: vLLM would round fp32 to it on load anyway
        # (the same round-to-nearest), and bf16 halves the bytes of an fp32 trainer's.
        self.dtype = getattr(torch, str(info.get("dtype", "float32")).removeprefix("torch."))

    def _wait_ready(self, connect_timeout: float) -> dict:
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                return self._call("GET", "/health", timeout=10)
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                if time.monotonic() > deadline:
                    raise PosttrainError(f"no vllm_server answering at {self.url} after {connect_timeout:.0f} s "
                                         f"({getattr(e, 'reason', e)})") from None
                time.sleep(1.0)

    def _call(self, method: str, path: str, body: bytes | None = None, *, content_type: str = "application/json",
              timeout: float | None = None) -> dict:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return json.loads(resp.read())
        except http.client.RemoteDisconnected:
            raise RuntimeError(f"vllm_server {self.url} closed the connection during {path} (did it stop?)") from None
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", str(e))
            except ValueError:
                message = str(e)
            if e.code == 400:
                raise ValueError(message) from None
            raise RuntimeError(f"vllm_server {path}: {message}") from None

    # ------------------------------------------------------------------ sampling
    def generate(self, prompt_token_ids: Sequence[Sequence[int]], n: int, sampling: SamplingConfig) -> Rollouts:
        check_request(prompt_token_ids, n, sampling)
        self._check_open()
        start = time.perf_counter()
        body = json.dumps({"prompt_token_ids": [list(map(int, p)) for p in prompt_token_ids], "n": n,
                           "sampling": asdict(sampling)}).encode()
        out = self._call("POST", "/generate", body)
        texts = self.tokenizer.batch_decode(out["token_ids"], skip_special_tokens=True)
        result = Rollouts(prompt_index=out["prompt_index"], token_ids=out["token_ids"], texts=texts,
                          logprobs=out["logprobs"], finish_reasons=out["finish_reasons"])
        result.extra.update(out.get("extra", {}), generate_s=time.perf_counter() - start, engine="vllm_server",
                            server_generate_s=out.get("extra", {}).get("generate_s"))
        return result

    # ------------------------------------------------------------------ weights
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Upload the trainer's full weights in safetensors chunks, then apply them all at
        once (module docstring)."""
        from safetensors.torch import save

        self._check_open()
        update = self._call("POST", "/weights/begin", b"")["update"]
        for index, chunk in enumerate(chunked(named_tensors, self.chunk_bytes, self.dtype)):
            self._call("POST", f"/weights/chunk?update={update}&index={index}", save(chunk),
                       content_type="application/octet-stream")
        self.weight_syncs = int(self._call("POST", f"/weights/commit?update={update}", b"")["weight_syncs"])

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the vllm_server engine is closed")

    def __enter__(self) -> "VLLMServerEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def chunked(named_tensors: Iterable[tuple[str, torch.Tensor]], chunk_bytes: int,
            dtype: torch.dtype | None = None) -> Iterator[dict]:
    """``{name: contiguous CPU tensor}`` dicts of at most ``chunk_bytes`` each (a tensor
    larger than that goes alone), floating tensors cast to ``dtype`` when given. Tensors
    sharing storage within a chunk (tied weights) are copied: safetensors stores no shared
    storage."""
    chunk: dict[str, torch.Tensor] = {}
    size, seen = 0, set()
    for name, t in named_tensors:
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        if chunk and size + nbytes > chunk_bytes:
            yield chunk
            chunk, size, seen = {}, 0, set()
        if t.data_ptr() in seen:
            t = t.clone()
        seen.add(t.data_ptr())
        chunk[name] = t
        size += nbytes
    if chunk:
        yield chunk


# =============================================================================== server
@dataclass
class _Update:
    id: str
    folder: Path
    chunks: int = 0


class _Service:
    """What the HTTP handlers call: the engine, its lock, and the pending weight update."""

    def __init__(self, engine, staging: Path):
        self.engine, self.staging = engine, staging
        self.engine_lock = threading.Lock()  # vLLM's LLM is not thread-safe
        self.state_lock = threading.Lock()
        self.pending: _Update | None = None
        self.applied: Path | None = None  # the folder vLLM's config now names; kept until the next commit

    def health(self) -> dict:
        return {"model": self.engine.model_dir, "max_model_len": self.engine.max_model_len,
                "weight_syncs": self.engine.weight_syncs, "dtype": str(self.engine.llm.llm_engine.model_config.dtype)}

    def generate(self, request: dict) -> dict:
        try:
            prompts, n = request["prompt_token_ids"], int(request["n"])
            fields = request.get("sampling", {})
            sampling = SamplingConfig(**{**fields, "stop_token_ids": tuple(fields.get("stop_token_ids", ()))})
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed generate request: {e}") from None
        with self.engine_lock:
            r = self.engine.generate(prompts, n, sampling)
        return {"prompt_index": r.prompt_index, "token_ids": r.token_ids, "logprobs": r.logprobs,
                "finish_reasons": r.finish_reasons, "extra": {k: v for k, v in r.extra.items() if k != "engine"}}

    def begin(self) -> dict:
        with self.state_lock:
            update = _Update(secrets.token_hex(8), self.staging / f"update-{time.monotonic_ns()}")
            update.folder.mkdir(parents=True)
            old, self.pending = self.pending, update
        if old is not None:
            shutil.rmtree(old.folder, ignore_errors=True)  # abandoned by a client that went away
        return {"update": update.id}

    def _current(self, update_id: str) -> _Update:
        """The pending update, if ``update_id`` names it; call under ``state_lock``."""
        if self.pending is None or self.pending.id != update_id:
            raise ValueError(f"weight update {update_id!r} is not the current one (another update began)")
        return self.pending

    def write_chunk(self, update_id: str, index: int, body, length: int) -> dict:
        with self.state_lock:
            update = self._current(update_id)
        path = update.folder / f"chunk-{index:05d}.safetensors"
        partial = path.with_suffix(".partial")
        left = length
        with open(partial, "wb") as f:
            while left > 0:
                piece = body.read(min(left, 1 << 24))
                if not piece:
                    break
                f.write(piece)
                left -= len(piece)
        if left:
            partial.unlink(missing_ok=True)
            raise ValueError(f"chunk {index}: the body ended {left} bytes short")
        os.replace(partial, path)  # only whole chunks carry the name vLLM's loader globs
        with self.state_lock:
            update.chunks += 1
        return {"ok": True}

    def commit(self, update_id: str) -> dict:
        with self.state_lock:
            update = self._current(update_id)
            self.pending = None
        if not update.chunks:
            raise ValueError("weight update has no chunks")
        with self.engine_lock:
            self.engine.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(update.folder),
                                                                     "is_checkpoint_format": True})
            self.engine.llm.reset_prefix_cache()  # its KV entries came from the old weights
            self.engine.weight_syncs += 1
            old, self.applied = self.applied, update.folder
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return {"weight_syncs": self.engine.weight_syncs}


class _NoText:
    """The server's stand-in tokenizer: the client decodes texts with its own, so the
    server never loads one."""

    def batch_decode(self, token_ids, **kwargs) -> list[str]:
        return [""] * len(token_ids)


def _handler(service: _Service, request_timeout: float):
    class Handler(BaseHTTPRequestHandler):
        timeout = request_timeout  # socket timeout: a vanished client frees its thread

        def log_message(self, fmt, *args):  # one debug line instead of stderr noise per request
            log.debug("%s " + fmt, self.address_string(), *args)

        def _reply(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                log.info("client %s went away before its answer", self.address_string())

        def _run(self, fn) -> None:
            try:
                self._reply(200, fn())
            except ValueError as e:
                self._reply(400, {"error": str(e)})
            except (BrokenPipeError, ConnectionResetError, TimeoutError) as e:
                log.info("client %s went away: %s", self.address_string(), e)
            except Exception as e:  # the server keeps serving; the client sees the error
                log.exception("request %s failed", self.path)
                self._reply(500, {"error": f"{type(e).__name__}: {e}"})

        def do_GET(self):
            if urllib.parse.urlsplit(self.path).path == "/health":
                self._run(service.health)
            else:
                self._reply(404, {"error": f"no such endpoint {self.path}"})

        def do_POST(self):
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            length = int(self.headers.get("Content-Length") or 0)
            if url.path == "/weights/chunk":
                self._run(lambda: service.write_chunk(query.get("update", ""), int(query.get("index", 0)),
                                                      self.rfile, length))
                return
            body = self.rfile.read(length) if length else b""
            routes = {
                "/generate": lambda: service.generate(json.loads(body)),
                "/weights/begin": service.begin,
                "/weights/commit": lambda: service.commit(query.get("update", "")),
            }
            if url.path in routes:
                self._run(routes[url.path])
            else:
                self._reply(404, {"error": f"no such endpoint {self.path}"})

    return Handler


def serve(model_dir: str, *, host: str = "127.0.0.1", port: int = 8000, request_timeout: float = 3600.0,
          **engine_opts) -> None:
    """Run the server until SIGTERM/SIGINT (module docstring). ``engine_opts`` go to
    ``VLLMEngine`` (``dtype``, ``seed``, ``max_model_len``, ``gpu_memory_utilization``,
    ``kv_cache_gib``, ``quiet``, ...)."""
    from posttrain.rollout.reaper import Reaper
    from posttrain.rollout.vllm import VLLMEngine

    engine = VLLMEngine(model_dir, _NoText(), enable_sleep_mode=False, **engine_opts)
    staging = Path(tempfile.mkdtemp(prefix=f"posttrain-vllm-server-{os.getpid()}-",
                                    dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    reaper = Reaper([], [str(staging)])  # removes the uploads if this process is killed outright
    server = ThreadingHTTPServer((host, port), _handler(_Service(engine, staging), request_timeout))
    server.daemon_threads = True

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"{READY} http://{host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        engine.close()
        reaper.close()
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m posttrain.rollout.vllm_server",
                                description="serve a model for the vllm_server rollout engine")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="load MODEL (a save_pretrained folder) in vLLM and serve it")
    s.add_argument("model")
    s.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept trainers on other machines")
    s.add_argument("--port", type=int, default=8000, help="0: a free port, printed in the ready line")
    s.add_argument("--dtype", default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-model-len", type=int, default=None)
    s.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="share of the GPU vLLM takes (the server has its GPUs to itself)")
    s.add_argument("--kv-cache-gib", type=int, default=None, help="KV cache on a CPU, GiB")
    s.add_argument("--request-timeout", type=float, default=3600.0, help="seconds a connection may stay idle")
    s.add_argument("--verbose", action="store_true", help="vLLM's own logs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    if not (Path(args.model) / "config.json").is_file():
        print(f"error: {args.model}: not a model folder (no config.json)", file=sys.stderr)
        return 2
    serve(args.model, host=args.host, port=args.port, request_timeout=args.request_timeout, dtype=args.dtype,
          seed=args.seed, max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
          kv_cache_gib=args.kv_cache_gib, quiet=not args.verbose)
    return 0


if __name__ == "__main__":  # vLLM starts its engine process with spawn: the guard is required
    sys.exit(main())
