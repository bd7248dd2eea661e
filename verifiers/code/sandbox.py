"""Run untrusted Python programs: a long-lived sandboxed server per process.

How it works
------------
Each process that verifies code (each scoring worker) starts one server,
``_server.py``, under bubblewrap (``bwrap``) and sends it programs over a pipe. The
server forks one child per program; the child runs the program with ``exec`` (so there
is no interpreter start per program: ~100+ programs/s instead of ~3/s).

What the sandbox does (with bwrap, running as root as in our containers):

* the whole file system is mounted read-only (``--ro-bind / /``); ``/tmp`` is a private,
  size-limited tmpfs; each program gets a fresh, empty work directory there as its cwd,
  removed afterwards: nothing a program writes reaches the host's disk;
* a private network namespace with nothing in it (``--unshare-net``): no connection to
  the host's services, not even on 127.0.0.1; private pid, ipc and uts namespaces: the
  program cannot see, signal or kill any process outside the sandbox, and the server is
  root while the program runs as ``nobody``, so it cannot kill the server either;
* resource limits on the program: wall-clock timeout (the server kills it), CPU time
  (RLIMIT_CPU), address space (RLIMIT_AS, default 1 GiB), file size (16 MiB), open files
  (64) and processes (RLIMIT_NPROC, 64: fork bombs stop there);
* on timeout, or when the program ends, every process it started is killed, including
  ones that left its process group (``kill(-1)`` as the program's uid, inside the pid
  namespace); ``--die-with-parent`` takes the whole sandbox down if the worker dies;
* all capabilities are dropped except those the server needs to set the uid and clean
  up; the program itself has none (``NoNewPrivs`` is set by bwrap).

What it does not protect against:

* kernel exploits: namespaces and rlimits are not a VM; run untrusted code at scale on
  machines you can afford to lose;
* reading files: the file system is readable (read-only), so a program can read what
  ``nobody`` may read on the host (do not keep secrets world-readable);
* reward hacking: tests run in the same process as the program, after it; a program that
  patches builtins, ``AssertionError`` or writes to the result pipe can fake passes.
  Scores from hostile code are not trustworthy, only the host is protected;
* CPU and memory contention: limits are per program, not a cgroup; RLIMIT_NPROC counts
  all processes of ``nobody`` on the host;
* without bwrap (not installed, or unprivileged user namespaces disabled) a warning is
  logged once and only the resource limits, the uid drop and a best-effort empty network
  namespace (both when root) apply: the program can write where ``nobody`` can (e.g.
  /tmp), and children that call ``setsid()`` can escape the kill.
"""
from __future__ import annotations

import json
import logging
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

logger = logging.getLogger(__name__)

SANDBOX_UID = 65534  # nobody
SANDBOX_GID = 65534
NPROC_LIMIT = 64
TMPFS_BYTES = 256 << 20
_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_server.py")
_START_TIMEOUT = 10.0
_warned = False


class SandboxError(RuntimeError):
    pass


def _warn_once(msg: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        logger.warning(msg)


def _count_own_processes(uid: int) -> int:
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def _python_paths() -> list[str]:
    """Directories the sandboxed program's imports read from."""
    import site
    import sysconfig

    paths = {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sysconfig.get_paths()["stdlib"]}
    try:
        paths.update(site.getsitepackages())
    except AttributeError:
        pass
    kept: list[str] = []
    for p in sorted(os.path.realpath(p) for p in paths if os.path.isdir(p)):
        if not any(p == k or p.startswith(k + "/") for k in kept):
            kept.append(p)
    return kept


def _unhide_args(paths: list[str]) -> list[str]:
    """bwrap arguments that make ``paths`` reachable for ``nobody``.

    Python often lives under a directory other users cannot enter (pyenv under /root, mode
    0700). For each such path the topmost closed ancestor is replaced by an empty tmpfs
    (hiding everything else in it, a bonus) with the path bound back, read-only.
    """
    args: list[str] = []
    tops: set[str] = set()
    dirs: set[str] = set()
    for path in paths:
        parts = path.strip("/").split("/")
        ancestors = ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]
        closed = [a for a in ancestors if not os.stat(a).st_mode & 0o001]
        if not closed:
            continue
        top = closed[0]
        if any(top == t or top.startswith(t + "/") for t in tops):
            pass
        else:
            tops.add(top)
            args += ["--perms", "0755", "--tmpfs", top]
        for a in ancestors[ancestors.index(top) + 1:]:
            if a not in dirs:
                dirs.add(a)
                args += ["--perms", "0755", "--dir", a]
        args += ["--ro-bind", path, path]
    return args


def _bwrap_cmd(root: bool) -> list[str] | None:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None
    cmd = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
           "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp",
           "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session", "--chdir", "/tmp"]
    # The private /tmp hides whatever the host keeps there: a checkout or virtualenv under
    # /tmp (CI clones there) would lose its interpreter and the server script. Bind those
    # back, read-only.
    needed = _python_paths() + [os.path.dirname(os.path.realpath(_SERVER))]
    for path in needed:
        if path.startswith("/tmp/"):
            cmd += ["--ro-bind", path, path]
    if root:
        cmd += _unhide_args(_python_paths())
        cmd += ["--cap-drop", "ALL"]
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"):
            cmd += ["--cap-add", cap]
    else:
        cmd += ["--unshare-user"]
    return cmd + ["--"]


class Sandbox:
    """One sandbox server. ``run()`` is not thread-safe: use one Sandbox per thread."""

    def __init__(self, use_bwrap: bool | None = None):
        self._proc: subprocess.Popen | None = None
        self._host_workroot: str | None = None
        self._use_bwrap = use_bwrap
        self.sandboxed = False
        self._lock = threading.Lock()

    # -- server lifecycle --------------------------------------------------------------
    def _start(self) -> None:
        root = os.geteuid() == 0
        attempts = []
        if self._use_bwrap is not False:
            cmd = _bwrap_cmd(root)
            if cmd is not None:
                attempts.append((True, cmd))
            elif self._use_bwrap:
                raise SandboxError("bwrap not found")
        if self._use_bwrap is not True:
            attempts.append((False, []))
        last_err = "no sandbox available"
        for sandboxed, prefix in attempts:
            cfg = {
                "sandboxed": sandboxed,
                "uid": SANDBOX_UID if root else -1,
                "gid": SANDBOX_GID if root else -1,
                "killall": sandboxed and root,
                "nproc": NPROC_LIMIT if root else _count_own_processes(os.getuid()) + NPROC_LIMIT,
            }
            if sandboxed:
                cfg["workroot"] = "/tmp/posttrain-sandbox"
            else:
                self._host_workroot = tempfile.mkdtemp(prefix="posttrain-sandbox-")
                if root:
                    os.chmod(self._host_workroot, 0o711)
                cfg["workroot"] = self._host_workroot
            cmd = prefix + [sys.executable, "-I", _SERVER, json.dumps(cfg)]
            try:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                    close_fds=True, start_new_session=not sandboxed,
                    preexec_fn=None if sandboxed else _pdeathsig,
                )
            except OSError as e:
                last_err = str(e)
                continue
            self._proc = proc
            try:
                hello = self._recv(_START_TIMEOUT)
            except SandboxError as e:
                last_err = str(e)
                self._kill_server()
                continue
            if hello.get("ready"):
                self.sandboxed = sandboxed
                if not sandboxed:
                    _warn_once("bubblewrap (bwrap) is unavailable: code runs with resource limits only, "
                               "without file-system, network or pid isolation")
                return
        raise SandboxError(f"cannot start the code sandbox: {last_err}")

    def _kill_server(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.kill()
            except OSError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
        if self._host_workroot:
            shutil.rmtree(self._host_workroot, ignore_errors=True)
            self._host_workroot = None

    def close(self) -> None:
        with self._lock:
            self._kill_server()

    # -- protocol --------------------------------------------------------------------------
    def _recv(self, timeout: float) -> dict:
        assert self._proc is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        need = 4
        length = None
        while len(buf) < need:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxError("sandbox server did not answer in time")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, max(need - len(buf), 65536))
            if not chunk:
                raise SandboxError("sandbox server exited")
            buf += chunk
            if length is None and len(buf) >= 4:
                (length,) = struct.unpack(">I", buf[:4])
                need = 4 + length
        return json.loads(buf[4:need].decode("utf-8"))

    def run(self, code: str, *, tests: list[str] | None = None, program: str | None = None,
            timeout: float = 5.0, memory_mb: int = 1024) -> dict:
        """Run ``code`` followed by ``tests`` (a list of statements, each reported as passed or
        not) or by ``program`` (one script; pass = exit status 0). Returns the server's answer:
        ``status`` ("exit", "signal", "timeout" or "error"), ``exit_code``, ``results`` (one
        "1"/"0" per test that ran) and ``seconds``."""
        req = {"code": code, "timeout": float(timeout), "memory_mb": int(memory_mb)}
        if tests is not None:
            req["tests"] = [str(t) for t in tests]
        else:
            req["program"] = program or ""
        data = json.dumps(req).encode("utf-8")
        with self._lock:
            for attempt in (0, 1):
                if self._proc is None or self._proc.poll() is not None:
                    self._kill_server()
                    self._start()
                try:
                    self._proc.stdin.write(struct.pack(">I", len(data)) + data)
                    self._proc.stdin.flush()
                    return self._recv(timeout + 10.0)
                except (OSError, SandboxError) as e:
                    # The server died or hung (it should not: the program runs in a child).
                    self._kill_server()
                    if attempt == 1:
                        return {"status": "error", "exit_code": None, "results": "", "detail": str(e)}
        raise AssertionError("unreachable")


def _pdeathsig() -> None:
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


_local: dict = {}


def get_sandbox() -> Sandbox:
    """This process's (and thread's) sandbox, started on first use; forked children get their own."""
    key = (os.getpid(), threading.get_ident())
    sb = _local.get(key)
    if sb is None:
        sb = _local[key] = Sandbox()
    return sb


def close_all() -> None:
    """Stop this process's sandbox servers (the scoring workers call this before exiting)."""
    pid = os.getpid()
    for key in [k for k in _local if k[0] == pid]:
        _local.pop(key).close()


import atexit  # noqa: E402

atexit.register(close_all)
