"""The scorer's worker processes: who runs which call, and what happens when one misbehaves.

A run hands out batches of calls to ``size`` active workers and collects one result per
call. What a misbehaving verifier call costs (the issue's promise: that sample's reward,
and nothing else):

* it **raises**: the worker reports an error result; nothing else happens;
* it **kills its worker** (``os._exit``, a segfault, the OOM killer): the call scores 0
  as a crash, the worker's other calls go back to the queue, and a new worker takes its
  place (a fork: a few ms);
* it **hangs**: once it has run ``spare_after`` seconds its worker is *set aside*: the
  rest of its batch goes back to the queue and a spare worker takes its place at once,
  so the pool keeps its full strength while the slow call runs on. If the call finishes
  before ``timeout`` the worker is kept as a spare; if not it is killed and the call
  scores 0 as a timeout. So several hung calls run side by side (up to ``max_spares`` set
  aside at once) and a batch with hangs in it waits about one ``timeout``, not one per
  hang per worker. A worker's first call of a verifier is never set aside (it may be slow
  for good reasons: lazy imports, language profiles; a spare, freshly forked, would only
  pay the same again): it runs until the timeout like any call;
* it **leaks memory**: a worker whose resident memory has grown by more than
  ``memory_cap`` bytes since it started ends itself after its current call and is
  replaced; its unfinished calls go back to the queue.

Everything happens on the scorer's one thread; the workers' progress is read from their
shared-memory slot (``worker.py``) rather than from messages.
"""
from __future__ import annotations

import time
from collections import deque
from multiprocessing.connection import wait as mp_wait

from .worker import CRASH, TIMEOUT, Worker

# How often the loop looks at the workers' slots when no message arrives (a call that
# just started has no message to announce it).
_POLL_S = 0.05


class WorkerPool:
    """Active workers (``active``), workers set aside on a slow call (``detached``) and idle
    spares (``reserve``). At most ``max_spares`` processes beyond the active ones."""

    def __init__(self, ctx, *, timeout: float, spare_after: float, max_spares: int, memory_cap: int | None):
        self.ctx = ctx
        self.timeout = timeout
        self.spare_after = spare_after
        self.max_spares = max_spares
        self.memory_cap = memory_cap
        self.active: list[Worker] = []
        self.detached: list[Worker] = []
        self.reserve: list[Worker] = []

    def _new(self) -> Worker:
        return Worker(self.ctx, self.memory_cap)

    def grow(self, n: int) -> None:
        """At least ``n`` live active workers."""
        for i, w in enumerate(self.active):
            if not w.proc.is_alive():
                _end(w)
                self.active[i] = self._fresh()
        while len(self.active) < n:
            self.active.append(self._fresh())

    def _fresh(self) -> Worker:
        while self.reserve:
            w = self.reserve.pop()
            if w.proc.is_alive():
                return w
            _end(w)
        return self._new()

    def _spare(self) -> Worker | None:
        """A worker to take a set-aside one's place, if the spare budget allows."""
        if self.reserve:
            return self._fresh()
        if len(self.detached) < self.max_spares:
            return self._new()
        return None

    def _back(self, w: Worker) -> None:
        """A set-aside worker finished its slow call: keep it as a spare, or stop it."""
        self.detached.remove(w)
        w.detached = False
        if len(self.reserve) + len(self.detached) < self.max_spares:
            self.reserve.append(w)
        else:
            w.stop()
            w.proc.join(1)
            _end(w)

    def _drop(self, w: Worker, *, kill: bool) -> None:
        """Remove a worker that died, timed out or retired; an active one is replaced."""
        if kill or w.proc.is_alive():
            w.kill()
        else:
            w.proc.join(1)
            _end(w)
        if w.detached:
            self.detached.remove(w)
        else:
            self.active[self.active.index(w)] = self._fresh()

    def close(self) -> None:
        for w in self.detached:
            w.kill()
        everyone = self.active + self.reserve
        for w in everyone:
            w.stop()
        deadline = time.monotonic() + 2.0
        for w in everyone:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(2)
            _end(w)
        self.active, self.detached, self.reserve = [], [], []

    # -- one run ---------------------------------------------------------------------
    def run(self, items: list[tuple], out: list, batch_size: int) -> None:
        """Fill ``out[cid]`` with ``(score, reason, kind)`` for every call ``items[cid]``
        (``items[cid][0] == cid``). Returns when all are known and no active worker still
        holds a batch."""
        queue: deque = deque(list(range(s, min(s + batch_size, len(items))))
                             for s in range(0, len(items), batch_size))
        left = len(items)

        def resolve(cid: int, res: tuple) -> None:
            nonlocal left
            if out[cid] is None:
                out[cid] = res
                left -= 1

        def requeue(cids) -> None:
            rest = sorted(c for c in cids if out[c] is None)
            if rest:
                queue.appendleft(rest)

        def drain(w: Worker) -> bool:
            """Take every message the worker has sent; False if its pipe is closed."""
            try:
                while w.conn.poll():
                    results, done, retire = w.conn.recv()
                    for cid, score, reason, kind in results:
                        w.owed.discard(cid)
                        resolve(cid, (score, reason, kind))
                    if done:
                        w.busy = False
                        requeue(w.owed)  # calls skipped after an abandon or a retire
                        w.owed = set()
                        if retire:
                            return False
            except (EOFError, OSError):
                return False
            return True

        def fail(w: Worker, kind: int, reason: str, *, kill: bool) -> None:
            cur = w.current()
            if cur is not None and cur[0] in w.owed:
                w.owed.discard(cur[0])
                resolve(cur[0], (0.0, reason, kind))
            requeue(w.owed)
            w.owed = set()
            self._drop(w, kill=kill)

        while True:
            if left == 0:
                for w in list(self.detached):  # only calls already answered elsewhere are left there
                    self.detached.remove(w)
                    w.kill()
                for w in self.active:  # duplicates of answered calls: stop after the current one
                    if w.busy:
                        w.abandon()
            for w in self.active:
                while not w.busy and queue:
                    batch = [items[c] for c in queue.popleft() if out[c] is None]
                    if batch:
                        w.send(batch)
            watched = [w for w in self.active + self.detached if w.busy]
            if not watched:
                if left:
                    raise RuntimeError("verifier pool: calls left but no worker holds them")
                return
            now = time.monotonic()
            wake = now + _POLL_S
            can_spare = bool(self.reserve) or len(self.detached) < self.max_spares
            for w in watched:
                cur = w.current()
                if cur is not None:
                    settable = can_spare and cur[2] and not w.detached
                    limit = min(self.spare_after, self.timeout) if settable else self.timeout
                    wake = min(wake, cur[1] + limit)
            ready = set(mp_wait([w.conn for w in watched] + [w.proc.sentinel for w in watched],
                                timeout=max(0.0, wake - now) + 0.001))
            for w in watched:
                if w.conn in ready or w.proc.sentinel in ready:
                    if not drain(w):
                        w.proc.join(1)
                        drain(w)
                        if w.proc.exitcode == 0 and not w.busy:  # retired (memory cap), all handed back
                            self._drop(w, kill=False)
                        else:
                            fail(w, CRASH, f"crash: worker died (exit code {w.proc.exitcode}) while verifying",
                                 kill=False)
                        continue
                    if w.proc.sentinel in ready and not w.proc.is_alive():
                        drain(w)
                        fail(w, CRASH, f"crash: worker died (exit code {w.proc.exitcode}) while verifying",
                             kill=False)
                        continue
                if not w.busy:
                    if w.detached:
                        self._back(w)
                    continue
                cur = w.current()
                if cur is None:
                    continue
                elapsed = time.monotonic() - cur[1]
                if elapsed > self.timeout:
                    drain(w)
                    if w.busy and w.current() == cur:
                        fail(w, TIMEOUT, f"timeout: verifier ran past {self.timeout:g}s", kill=True)
                elif not w.detached and cur[2] and elapsed > self.spare_after:
                    spare = self._spare()
                    if spare is not None:  # set it aside: the rest of its batch goes to the others
                        w.abandon()
                        w.detached = True
                        requeue(w.owed - {cur[0]})
                        w.owed &= {cur[0]}
                        self.active[self.active.index(w)] = spare
                        self.detached.append(w)


def _end(w: Worker) -> None:
    try:
        w.conn.close()
    except Exception:
        pass
