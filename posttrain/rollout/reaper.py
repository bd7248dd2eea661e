"""A watchdog that ends an engine's helper processes when their owner dies.

vLLM's engine-core process (and its worker) outlive a trainer that is killed (SIGKILL,
an OOM kill, a test runner's timeout): nothing in them notices the owner is gone, so they
keep their memory and cores forever. The reaper is a tiny separate Python process,
started by the owner after the engine is up, that watches the owner's pid; when the
owner exits, or closes the reaper's stdin (a normal ``close``), it kills whatever is left
of the listed processes and their children and removes the listed paths (the engine's
weight-sync folder in ``/dev/shm``). Hand-written because vLLM only gives its TP workers
a "death pipe", not the engine core itself.
"""

from __future__ import annotations

import json
import subprocess
import sys

_WATCH = r"""
import json, os, select, shutil, sys, time
import psutil
spec = json.loads(sys.stdin.readline())
owner = spec["owner"]

def owner_alive():
    try:
        return psutil.Process(owner).create_time() == spec["owner_created"]
    except psutil.Error:
        return False

while owner_alive():
    ready, _, _ = select.select([sys.stdin], [], [], 0.5)
    if ready and not sys.stdin.readline():
        break  # EOF: the owner closed the engine (or died)
victims = []
for pid, created in spec["pids"]:
    try:
        p = psutil.Process(pid)
        if p.create_time() == created:
            victims += [p] + p.children(recursive=True)
    except psutil.Error:
        pass
for p in victims:
    try:
        p.kill()
    except psutil.Error:
        pass
def gone(p):
    try:
        return p.status() == psutil.STATUS_ZOMBIE  # dead; its parent has yet to reap it
    except psutil.Error:
        return True

deadline = time.monotonic() + 10
while not all(gone(p) for p in victims) and time.monotonic() < deadline:
    time.sleep(0.05)
for path in spec["paths"]:
    shutil.rmtree(path, ignore_errors=True)
"""


class Reaper:
    """Kills ``pids`` (and their children) and removes ``paths`` once this process exits
    or :meth:`close` is called."""

    def __init__(self, pids: list[int], paths: list[str] = ()):
        import os

        import psutil

        entries = []
        for pid in pids:
            try:
                entries.append((pid, psutil.Process(pid).create_time()))
            except psutil.Error:
                pass
        me = os.getpid()
        spec = {"owner": me, "owner_created": psutil.Process(me).create_time(), "pids": entries,
                "paths": [str(p) for p in paths]}
        # Its own session: a Ctrl-C aimed at the trainer's process group must not stop
        # the reaper before it has done its job.
        self._proc = subprocess.Popen([sys.executable, "-c", _WATCH], stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        self._proc.stdin.write((json.dumps(spec) + "\n").encode())
        self._proc.stdin.flush()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def close(self, timeout: float = 15.0) -> None:
        """Tell the reaper to finish now (kill leftovers, remove paths) and wait for it."""
        if self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
