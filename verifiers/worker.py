"""One verifier worker process, and the scorer's handle on it.

A worker receives batches of calls ``(call id, verifier name, response, ground truth,
prompt, reasoning_format)`` over a pipe and answers with messages ``(results, done,
retire)``: ``results`` a list of ``(call id, score, reason, kind)``, ``done`` true on the
batch's last message, ``retire`` true when the worker is about to exit because its memory
grew past its cap.

Results are buffered and sent at most every ``FLUSH_S`` (and at the end of each batch):
one pipe message per call cost more than a fast verifier (GSM8K's is ~2 µs) and halved the
pool's throughput. The parent still knows which call a worker is on, at any moment,
without a message: the worker writes the call's id and start time into a few bytes of
shared memory (``slot``) before each call. That is what the parent's timeout and
crash accounting read, so a call that hangs or kills its worker is named exactly even
though the results before it may still sit in the dead worker's buffer (those calls are
simply scored again elsewhere).

The parent can also set the slot's ``abandon`` flag: the worker then stops after the call
in progress and sends what it has (the scorer does that to a worker stuck on a slow call,
after handing the rest of its batch to others).
"""
from __future__ import annotations

import faulthandler
import os
import signal
import sys
import time
from typing import Any

from .registry import call_verifier, get_verifier

OK, ERROR, TIMEOUT, CRASH = 0, 1, 2, 3
FLUSH_S = 0.001
MEMORY_CHECK_S = 0.05
# slot layout (doubles): the call in progress (-1: none), when it started
# (time.monotonic(), the same clock in every process), the abandon flag, and whether this
# worker has finished a call of the same verifier before (a first call may be slow for
# good reasons: lazy imports, language profiles, sympy's caches).
_CID, _START, _ABANDON, _WARM = 0, 1, 2, 3
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def run_call(cache: dict, name: str, response: str, gt: Any, prompt: str | None,
             reasoning_format: bool = True) -> tuple[float, str | None, int]:
    """One verifier call as ``(score, reason, kind)``; whatever it raises is an ERROR."""
    try:
        fn = cache.get(name)
        if fn is None:
            fn = cache[name] = get_verifier(name)
        res = call_verifier(fn, response, gt, prompt, reasoning_format=reasoning_format)
        return res.score, res.reason, OK
    except BaseException as e:  # noqa: BLE001 - a verifier may raise anything, even SystemExit
        msg = str(e).splitlines()[0] if str(e) else ""
        return 0.0, f"error: {type(e).__name__}: {msg}"[:500], ERROR


def _set_pdeathsig() -> None:
    """Die if the parent dies (Linux), so no worker outlives a killed scoring run."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _rss() -> int:
    """Resident bytes of this process (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def worker_main(conn, slot, memory_cap: int | None) -> None:
    """The worker's loop. ``memory_cap``: bytes its resident memory may grow past what it
    had when it started (a fork shares its parent's pages, so the growth is what counts)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_pdeathsig()
    faulthandler.disable()  # a crashing verifier is reported as a crash, not a stack dump
    base = _rss()
    cache: dict = {}
    seen: set = set()
    monotonic = time.monotonic
    retire = False
    while not retire:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            break
        if batch is None:
            break
        buf: list = []
        flushed = checked = monotonic()
        for cid, name, response, gt, prompt, reasoning_format in batch:
            if slot[_ABANDON]:
                break
            slot[_WARM] = 1.0 if name in seen else 0.0
            slot[_START] = monotonic()
            slot[_CID] = cid  # written last: the parent reads the id, then the rest, then the id again
            buf.append((cid, *run_call(cache, name, response, gt, prompt, reasoning_format)))
            seen.add(name)
            if slot[_ABANDON]:  # its result goes in the batch's last message, with no delay
                break
            now = monotonic()
            if now - flushed >= FLUSH_S:
                # Memory is read at most every MEMORY_CHECK_S within a batch (a /proc read
                # costs ~10 µs, a fast call ~2 µs), and at its end.
                if memory_cap is not None and now - checked >= MEMORY_CHECK_S:
                    checked = now
                    if _rss() - base > memory_cap:
                        retire = True
                        break
                conn.send((buf, False, False))
                buf, flushed = [], now
        slot[_CID] = -1.0
        if memory_cap is not None and not retire:
            retire = _rss() - base > memory_cap
        conn.send((buf, True, retire))
    sandbox = sys.modules.get("posttrain.verifiers.code.sandbox")
    if sandbox is not None:
        sandbox.close_all()
    os._exit(0)  # skip atexit handlers inherited from the parent


class Worker:
    """The parent's handle: the process, its pipe and slot, and the calls it owes."""

    def __init__(self, ctx, memory_cap: int | None = None):
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.slot = ctx.RawArray("d", 4)
        self.slot[_CID] = -1.0
        self.proc = ctx.Process(target=worker_main, args=(child_conn, self.slot, memory_cap), daemon=True)
        self.proc.start()
        child_conn.close()
        self.conn = parent_conn
        self.owed: set[int] = set()  # call ids sent to it and not answered yet
        self.busy = False            # a batch is out and its last message not in
        self.detached = False        # set aside while stuck on a slow call

    def send(self, batch: list) -> None:
        self.slot[_ABANDON] = 0.0
        self.owed = {item[0] for item in batch}
        self.busy = True
        self.conn.send(batch)

    def current(self) -> tuple[int, float, bool] | None:
        """``(call id, start time, warm)`` of the call in progress, or None; ``warm``: the
        worker has finished a call of the same verifier before. The id is read twice around
        the rest so that a call starting during the read is not mistaken for an old one
        (the worker writes the id last)."""
        cid = self.slot[_CID]
        start, warm = self.slot[_START], self.slot[_WARM]
        if cid < 0 or self.slot[_CID] != cid:
            return None
        return int(cid), start, warm > 0

    def abandon(self) -> None:
        """Ask the worker to stop after its call in progress."""
        self.slot[_ABANDON] = 1.0

    def stop(self) -> None:
        """Ask an idle worker to exit."""
        try:
            self.conn.send(None)
        except Exception:
            pass

    def kill(self) -> None:
        try:
            self.proc.kill()
        except Exception:
            pass
        self.proc.join(5)
        self.conn.close()
