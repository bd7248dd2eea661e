"""Score many rows with verifiers, in parallel worker processes.

A row is a dict with ``response``, ``dataset`` (a verifier name or a list of names),
``ground_truth`` (a value, or a list matching ``dataset``) and optional ``prompt``.
With several verifiers on a row its score is their weighted mean (weights default to 1),
then times ``multiplier``.

Each (row, verifier) pair is one *call*. Calls are sent to worker processes in batches
(no process per row). A call that raises scores 0 with the exception as its reason; a
call that runs past ``timeout`` seconds gets its worker killed, and a call during which
the worker dies (``os._exit``, a segfault, the OOM killer) scores 0 too. In both cases
the rest of that worker's batch goes back to the queue and a new worker takes its place:
the run goes on. A call still running after ``spare_after`` seconds has its worker set
aside and a spare put in its place, so a hang holds up its own row and no other; a worker
whose memory grew past ``worker_memory_mb`` is replaced (``pool.py``). ``ScoreResults``
counts errors, timeouts and crashes.

Workers are forked (where the platform allows) so verifiers registered at run time with
``register_verifier`` are available in them, and ``math_verify`` is imported once, before
the fork. :meth:`Scorer.start` forks the whole pool at once: a training stage calls it
before any model or CUDA context exists, so the workers are copies of a small, clean
process. (A worker that crashes or times out later is re-forked from the trainer; the
child only runs verifiers, never CUDA, as PyTorch's DataLoader workers do. Pass
``mp_context="forkserver"`` to fork even those from a clean server, at the price of
verifiers registered at run time, which a fork server does not see.)

:meth:`Scorer.submit` is the non-blocking form: it checks the rows, hands them to a
background thread that drives the pool, and returns a ``concurrent.futures.Future`` whose
``result()`` is the :class:`ScoreResults`. Scoring one batch then overlaps generating the
next. Submitted batches are scored one after another, in order.

The default pool size is per machine, not per process: ``cpus // LOCAL_WORLD_SIZE`` (at
least 1), so eight ranks on one machine share its cores instead of starting eight times
as many workers.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Sequence

from .pool import WorkerPool
from .registry import VerifierResult, get_verifier
from .worker import CRASH, ERROR, TIMEOUT, Worker, run_call

DEFAULT_TIMEOUT = 30.0
# A call running this long (at most a tenth of the timeout) gets its worker set aside
# and a spare put in its place (pool.py).
DEFAULT_SPARE_AFTER = 1.0
# A worker whose resident memory grew by this much since it started is replaced.
DEFAULT_WORKER_MEMORY_MB = 2048.0
_MAX_BATCH = 32


def default_workers(cpus: int | None = None, local_world_size: int | None = None) -> int:
    """Worker processes per scorer: the machine's CPUs shared among the training processes
    on it (``LOCAL_WORLD_SIZE``, set by ``torchrun`` and ``accelerate launch``), at least 1."""
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
    if local_world_size is None:
        try:
            local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        except ValueError:
            local_world_size = 1
    return max(1, int(cpus) // max(1, int(local_world_size)))


class ScoreResults(list):
    """A ``list[VerifierResult]`` (one per row, in input order) plus counters.

    ``n_errors`` counts verifier calls that raised or returned something invalid,
    ``n_timeouts`` calls that ran past the timeout, ``n_crashes`` calls whose worker died.
    """

    def __init__(self, items: Iterable[VerifierResult] = (), n_errors: int = 0, n_timeouts: int = 0, n_crashes: int = 0):
        super().__init__(items)
        self.n_errors = n_errors
        self.n_timeouts = n_timeouts
        self.n_crashes = n_crashes

    @property
    def scores(self) -> list[float]:
        return [r.score for r in self]

    @property
    def n_failed(self) -> int:
        return self.n_errors + self.n_timeouts + self.n_crashes


def row_calls(i: int, row: Any) -> list[tuple[str, Any]]:
    """``[(verifier name, ground truth), ...]`` of row ``i``; ``ValueError`` naming the row
    if it is malformed. Callers can check rows with it before they have responses."""
    if not isinstance(row, dict):
        raise ValueError(f"row {i}: expected an object, got {type(row).__name__}")
    for key in ("response", "dataset", "ground_truth"):
        if key not in row:
            raise ValueError(f"row {i}: missing field {key!r}")
    if not isinstance(row["response"], str):
        raise ValueError(f"row {i}: 'response' must be a string")
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"row {i}: 'prompt' must be a string or null")
    dataset, gt = row["dataset"], row["ground_truth"]
    if isinstance(dataset, str):
        return [(dataset, gt)]
    if not isinstance(dataset, (list, tuple)) or not dataset or not all(isinstance(d, str) for d in dataset):
        raise ValueError(f"row {i}: 'dataset' must be a verifier name or a non-empty list of names")
    if len(dataset) == 1:
        if isinstance(gt, (list, tuple)) and len(gt) == 1:
            gt = gt[0]
        return [(dataset[0], gt)]
    if isinstance(gt, str):
        import json

        try:
            gt = json.loads(gt)
        except ValueError:
            pass
    if not isinstance(gt, (list, tuple)) or len(gt) != len(dataset):
        n = len(gt) if isinstance(gt, (list, tuple)) else 1
        raise ValueError(f"row {i}: 'dataset' has {len(dataset)} names but 'ground_truth' has {n} values")
    return list(zip(dataset, gt))


class Scorer:
    """A pool of verifier worker processes, kept between batches.

    ``with Scorer(workers=4, timeout=30) as s: results = s.score(rows)``. The RLVR loop
    keeps one so that each batch does not pay for starting processes, calls
    :meth:`start` before loading any model, and uses :meth:`submit` so that scoring runs
    while the next batch generates. ``workers=0`` runs in this process (no timeout or
    crash protection; for debugging). ``reasoning_format`` is passed to every verifier
    call (see ``call_verifier``).

    ``timeout``: seconds one verifier call may run before it scores 0 (its worker is
    killed). ``spare_after``: seconds after which a still-running call's worker is set
    aside and a spare takes its place (the call keeps running until ``timeout``; default
    ``min(1 s, timeout / 10)``).
    ``max_spares``: workers that may be set aside or kept spare at once (default
    ``max(8, 2 * workers)``). ``worker_memory_mb``: growth of a worker's resident memory after
    which it is replaced (None: no cap).
    """

    def __init__(self, workers: int | None = None, timeout: float = DEFAULT_TIMEOUT, mp_context: str | None = None,
                 *, reasoning_format: bool = True, spare_after: float | None = None,
                 max_spares: int | None = None, worker_memory_mb: float | None = DEFAULT_WORKER_MEMORY_MB):
        self.workers = default_workers() if workers is None else int(workers)
        if self.workers < 0:
            raise ValueError("workers must be >= 0")
        if timeout is None or timeout <= 0:
            raise ValueError("timeout must be positive")
        if spare_after is None:
            spare_after = min(DEFAULT_SPARE_AFTER, timeout / 10)
        if spare_after <= 0:
            raise ValueError("spare_after must be positive")
        if max_spares is not None and max_spares < 0:
            raise ValueError("max_spares must be >= 0")
        if worker_memory_mb is not None and worker_memory_mb <= 0:
            raise ValueError("worker_memory_mb must be positive (or None: no cap)")
        self.timeout = float(timeout)
        self.reasoning_format = bool(reasoning_format)
        if mp_context is None:
            mp_context = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        self._workers = WorkerPool(
            mp.get_context(mp_context), timeout=self.timeout, spare_after=float(spare_after),
            max_spares=max(8, 2 * self.workers) if max_spares is None else int(max_spares),
            memory_cap=None if worker_memory_mb is None else int(worker_memory_mb * 2**20))
        # One thread drives the pool for submitted batches, one batch at a time, in order.
        self._executor: ThreadPoolExecutor | None = None

    @property
    def _pool(self) -> list[Worker]:
        """The active worker processes (the ones batches go to)."""
        return self._workers.active

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> "Scorer":
        """Fork every worker now (call it before any model or CUDA context exists).
        Without it, workers are forked on first use."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="posttrain-scorer")
        # Done on the scorer's own thread: it is the only one that touches the pool.
        self._executor.submit(self._workers.grow, self.workers).result()
        return self

    def close(self) -> None:
        """Finish the batch being scored, drop those not started, stop the workers."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        self._workers.close()

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- scoring ---------------------------------------------------------------------
    def score(self, rows: Sequence[dict], *, weights: dict[str, float] | None = None, multiplier: float = 1.0) -> ScoreResults:
        """Score ``rows`` and wait for the results (one per row, in order)."""
        return self.submit(rows, weights=weights, multiplier=multiplier).result()

    def submit(self, rows: Sequence[dict], *, weights: dict[str, float] | None = None,
               multiplier: float = 1.0) -> "Future[ScoreResults]":
        """Start scoring ``rows`` and return at once. The future's ``result()`` waits for
        the :class:`ScoreResults`; ``done()`` says whether it is ready. Malformed rows and
        unknown verifier names raise here, before any work."""
        rows = list(rows)
        weights = dict(weights or {})
        for k, v in weights.items():
            if not isinstance(v, (int, float)) or v < 0 or math.isnan(v):
                raise ValueError(f"weight for {k!r} must be a non-negative number")
        calls: list[tuple[int, str, str, Any, str | None]] = []  # (row, name, response, gt, prompt)
        for i, row in enumerate(rows):
            for name, gt in row_calls(i, row):
                calls.append((i, name, row["response"], gt, row.get("prompt")))
        for name in sorted({c[1] for c in calls}):
            get_verifier(name)  # unknown names fail here, before any work (and import before fork)

        if self.workers == 0 or not calls:
            future: Future = Future()
            cache: dict = {}
            out = [run_call(cache, name, response, gt, prompt, self.reasoning_format)
                   for _, name, response, gt, prompt in calls]
            future.set_result(self._combine(rows, calls, out, weights, multiplier))
            return future
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="posttrain-scorer")
        return self._executor.submit(self._score_calls, rows, calls, weights, multiplier)

    def _score_calls(self, rows, calls, weights, multiplier) -> ScoreResults:
        out: list[tuple[float, str | None, int] | None] = [None] * len(calls)
        self._run_parallel(calls, out)
        return self._combine(rows, calls, out, weights, multiplier)

    def _run_parallel(self, calls, out) -> None:
        n_workers = max(1, min(self.workers, len(calls)))
        bs = max(1, min(_MAX_BATCH, math.ceil(len(calls) / (n_workers * 4))))
        items = [(cid, *calls[cid][1:], self.reasoning_format) for cid in range(len(calls))]
        self._workers.grow(n_workers)
        self._workers.run(items, out, bs)

    @staticmethod
    def _combine(rows, calls, out, weights, multiplier) -> ScoreResults:
        per_row: list[list[tuple[str, float, str | None]]] = [[] for _ in rows]
        counts = {ERROR: 0, TIMEOUT: 0, CRASH: 0}
        for (i, name, *_), res in zip(calls, out):
            score, reason, kind = res
            if kind in counts:
                counts[kind] += 1
            per_row[i].append((name, score, reason))
        results = ScoreResults(n_errors=counts[ERROR], n_timeouts=counts[TIMEOUT], n_crashes=counts[CRASH])
        for parts in per_row:
            if len(parts) == 1:
                _, score, reason = parts[0]
            else:
                ws = [float(weights.get(name, 1.0)) for name, _, _ in parts]
                total = sum(ws)
                score = sum(w * s for w, (_, s, _) in zip(ws, parts)) / total if total > 0 else 0.0
                reasons = [f"{name}: {r}" for name, _, r in parts if r]
                reason = "; ".join(reasons) if reasons else None
            results.append(VerifierResult(float(score) * multiplier, reason))
        return results


def score_rows(
    rows: Sequence[dict],
    *,
    weights: dict[str, float] | None = None,
    multiplier: float = 1.0,
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    reasoning_format: bool = True,
) -> ScoreResults:
    """Score ``rows`` (see the module docstring); one :class:`VerifierResult` per row, in order.

    ``workers`` defaults to :func:`default_workers`; ``timeout`` is per verifier call, in
    seconds; ``reasoning_format`` is passed to every verifier call.
    Raises ``ValueError`` for a malformed row and ``UnknownVerifierError`` for an unknown
    verifier name, before scoring anything.
    """
    with Scorer(workers=workers, timeout=timeout, reasoning_format=reasoning_format) as scorer:
        return scorer.score(rows, weights=weights, multiplier=multiplier)
