"""Run untrusted Python programs: a long-lived sandboxed server per process.

How it works
------------
Each process that verifies code (each scoring worker) starts one server,
``_server.py``, under bubblewrap (``bwrap``) and sends it programs over a pipe. The
server forks one child per program; the child runs the program with ``exec`` (so there
is no interpreter start per program: ~100+ programs/s instead of ~3/s). Tests are timed
one by one (see ``_server.py``).

Sandbox modes
-------------
The mode comes from the environment variable ``POSTTRAIN_CODE_SANDBOX``, read when a
sandbox starts, so that it reaches the scoring workers (forked or spawned processes
inherit the environment). :func:`set_sandbox_mode` sets it from Python; set it before a
``Scorer`` starts its workers. The RLVR stage sets it from its recipe field
``code_sandbox``.

* ``auto`` (the default, used by ``posttrain verify``): bwrap when it is installed; when
  it is not, a warning is logged once and the resource limits alone apply.
* ``bwrap``: bwrap or nothing. Without bwrap every code call fails with a one-line
  :class:`SandboxError`; the RLVR stage's default, which refuses to start
  (:func:`check_sandbox`) rather than run model-written code unisolated.
* ``rlimits_only``: no bwrap even when installed; resource limits only. For trusted code,
  or machines where bwrap cannot work (no unprivileged user namespaces).

In every mode, bwrap that is installed but cannot start the server is an error that
quotes bwrap's own message, never a quiet fallback.

Where the sandbox can start
---------------------------
The server needs the interpreter, its virtualenv, the standard library and its own
script; :mod:`.mounts` shows exactly those inside the sandbox wherever they live on the
host (under ``/tmp``, which the sandbox replaces with its own; under a folder closed to
other users, such as ``mktemp -d`` or ``/root``; on a path with spaces), as root and as
an ordinary user. This module and ``mounts.py`` and ``_server.py`` use the standard
library only.

What the sandbox does (with bwrap; as root, as in our containers, or as an ordinary user):

* the whole file system is mounted read-only (``--ro-bind / /``); ``/tmp`` is a private
  tmpfs, size-limited with bwrap 0.7 and later (0.5 is the oldest that works); each
  program gets a fresh, empty work directory there as its cwd, removed afterwards:
  nothing a program writes reaches the host's disk; as root, folders closed to other
  users are replaced by empty ones, except for what Python needs below them;
* a private network namespace with nothing in it (``--unshare-net``): no connection to
  the host's services, not even on 127.0.0.1; private pid, ipc and uts namespaces: the
  program cannot see, signal or kill any process outside the sandbox; as root, the server
  stays root while the program runs as ``nobody``, so it cannot kill the server either
  (as an ordinary user both share the user's uid: a program can kill the server, which
  costs a restart and that program's score, nothing outside the sandbox);
* resource limits on the program: wall-clock limits (per test and in total; the server
  kills it), CPU time (RLIMIT_CPU), address space (RLIMIT_AS, default 1 GiB), file size
  (16 MiB), open files (64) and processes (RLIMIT_NPROC, 64: fork bombs stop there);
* on timeout, or when the program ends, every process it started is killed, including
  ones that left its process group with ``setsid()`` (the server's ``kill(-1)`` inside the
  pid namespace, which holds nothing else but bwrap's init), as root and as an ordinary
  user; ``--die-with-parent`` takes the whole sandbox down if the worker dies;
* all capabilities are dropped except those the server needs to set the uid and clean
  up; the program itself has none (``NoNewPrivs`` is set by bwrap).

What it does not protect against:

* kernel exploits: namespaces and rlimits are not a VM; run untrusted code at scale on
  machines you can afford to lose;
* reading files: the file system is readable (read-only), so a program can read what
  ``nobody`` may read on the host (do not keep secrets world-readable);
* reward hacking: tests run in the program's process, after it; a program that
  patches builtins, ``AssertionError`` or writes to the result pipe can fake passes.
  Scores from hostile code are not trustworthy, only the host is protected;
* CPU and memory contention: limits are per program, not a cgroup; RLIMIT_NPROC counts
  all processes of ``nobody`` on the host;
* without bwrap (mode ``rlimits_only``, or ``auto`` with bwrap not installed) only the
  resource limits, the cleanup (the server is a child subreaper: whatever the program
  left running, even after ``setsid()``, is still below it and killed), the uid drop and
  a best-effort empty network namespace (both when root) apply: the program can write
  where ``nobody`` can (e.g. /tmp), reach the network as an ordinary user, and see and
  signal other processes of its uid.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

from .mounts import bwrap_mounts, python_paths

logger = logging.getLogger(__name__)

MODE_ENV = "POSTTRAIN_CODE_SANDBOX"
MODES = ("auto", "bwrap", "rlimits_only")
SANDBOX_UID = 65534  # nobody
SANDBOX_GID = 65534
NPROC_LIMIT = 64
TMPFS_BYTES = 256 << 20
SIZE_OPTION_SINCE = (0, 7)  # the bwrap release that added --size (for the private /tmp)
_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_server.py")
_START_TIMEOUT = 30.0  # generous: a busy machine is slow to start Python; failures exit at once
_ROOT_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER")
_OPT_OUT = f"or set code_sandbox: rlimits_only ({MODE_ENV}=rlimits_only) to run code with resource limits only"
_warned: set[str] = set()


class SandboxError(RuntimeError):
    """The code sandbox cannot run programs; the message is one line and says why."""


def sandbox_mode() -> str:
    """The sandbox mode from ``POSTTRAIN_CODE_SANDBOX`` (``auto`` when unset)."""
    mode = os.environ.get(MODE_ENV, "").strip() or "auto"
    if mode not in MODES:
        raise SandboxError(f"{MODE_ENV}={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def set_sandbox_mode(mode: str) -> None:
    """Set the sandbox mode for this process and the processes it starts from now on
    (scoring workers included: call it before ``Scorer.start``). This process's running
    sandboxes are closed, so that its next program starts in the new mode."""
    if mode not in MODES:
        raise ValueError(f"code sandbox mode {mode!r}: expected one of {', '.join(MODES)}")
    os.environ[MODE_ENV] = mode
    close_all()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
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


_bwrap_versions: dict[str, tuple[int, ...] | None] = {}


def bwrap_version(bwrap: str) -> tuple[int, ...] | None:
    """``bwrap --version`` as numbers ("bubblewrap 0.8.0" -> (0, 8, 0)); None when it does
    not say. Asked once per process and path."""
    if bwrap not in _bwrap_versions:
        try:
            out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
        _bwrap_versions[bwrap] = tuple(int(g) for g in m.groups() if g is not None) if m else None
    return _bwrap_versions[bwrap]


def _bwrap_cmd(bwrap: str, root: bool) -> list[str]:
    needed = python_paths() + [os.path.dirname(_SERVER)]
    tmp_bytes: int | None = TMPFS_BYTES
    version = bwrap_version(bwrap)
    if version is not None and version < SIZE_OPTION_SINCE:
        # Ubuntu 22.04 ships 0.6: without --size the private /tmp may grow to the host's
        # tmpfs default (half the memory) during one program; it is emptied after each.
        tmp_bytes = None
        _warn_once(f"bubblewrap {'.'.join(map(str, version))} has no --size (0.7 and later do): "
                   "the code sandbox's /tmp is not size-limited")
    cmd = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
           *bwrap_mounts(needed, hide_closed=root, tmp_bytes=tmp_bytes),
           "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session", "--chdir", "/tmp"]
    if root:
        cmd += ["--cap-drop", "ALL"]
        for cap in _ROOT_CAPS:
            cmd += ["--cap-add", cap]
    else:
        cmd += ["--unshare-user"]
    return cmd + ["--"]


def _last_line(f) -> str:
    """The last non-empty line a failed server (or bwrap) wrote to its stderr file."""
    try:
        f.seek(0)
        text = f.read()[-4000:].decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


class Sandbox:
    """One sandbox server. ``run()`` is not thread-safe: use one Sandbox per thread.

    ``mode`` is one of :data:`MODES`; None reads ``POSTTRAIN_CODE_SANDBOX`` at start."""

    def __init__(self, mode: str | None = None):
        if mode is not None and mode not in MODES:
            raise ValueError(f"code sandbox mode {mode!r}: expected one of {', '.join(MODES)}")
        self._mode = mode
        self._proc: subprocess.Popen | None = None
        self._stderr = None
        self._host_workroot: str | None = None
        self.sandboxed = False
        self._lock = threading.Lock()

    # -- server lifecycle --------------------------------------------------------------
    def _start(self) -> None:
        mode = self._mode or sandbox_mode()
        bwrap = shutil.which("bwrap") if mode != "rlimits_only" else None
        if bwrap is None and mode == "bwrap":
            raise SandboxError("bubblewrap (bwrap) is not installed; install it (Debian: apt-get install "
                               f"bubblewrap), {_OPT_OUT}")
        root = os.geteuid() == 0
        sandboxed = bwrap is not None
        cfg = {
            "sandboxed": sandboxed,
            "uid": SANDBOX_UID if root else -1,
            "gid": SANDBOX_GID if root else -1,
            "killall": sandboxed,
            "nproc": NPROC_LIMIT if root else _count_own_processes(os.getuid()) + NPROC_LIMIT,
        }
        if sandboxed:
            prefix = _bwrap_cmd(bwrap, root)
            cfg["workroot"] = "/tmp/posttrain-sandbox"
        else:
            prefix = []
            self._host_workroot = tempfile.mkdtemp(prefix="posttrain-sandbox-")
            if root:
                os.chmod(self._host_workroot, 0o711)
            cfg["workroot"] = self._host_workroot
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(
                prefix + [sys.executable, "-I", _SERVER, json.dumps(cfg)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                close_fds=True, start_new_session=not sandboxed,
                preexec_fn=None if sandboxed else _pdeathsig,
            )
            hello = self._recv(_START_TIMEOUT)
            if not hello.get("ready"):
                raise SandboxError(f"unexpected greeting {hello!r}")
        except (OSError, SandboxError) as e:
            why = _last_line(self._stderr) or str(e)
            self._kill_server()
            if sandboxed:
                raise SandboxError(f"bwrap is installed but the code sandbox cannot start inside it: {why}; "
                                   f"fix that, {_OPT_OUT}") from None
            raise SandboxError(f"cannot start the code sandbox server: {why}") from None
        self.sandboxed = sandboxed
        if not sandboxed and mode == "auto":
            _warn_once("bubblewrap (bwrap) is not installed: code runs with resource limits only, "
                       "without file-system, network or pid isolation")

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
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._host_workroot:
            shutil.rmtree(self._host_workroot, ignore_errors=True)
            self._host_workroot = None

    def close(self) -> None:
        with self._lock:
            self._kill_server()

    @property
    def pid(self) -> int | None:
        """The process id of the running server (of bwrap, when sandboxed), else None."""
        return self._proc.pid if self._proc is not None else None

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
            timeout: float = 5.0, total_timeout: float | None = None, memory_mb: int = 1024) -> dict:
        """Run ``code`` followed by ``tests`` (statements, each timed on its own: ``timeout``
        seconds per test, and for the program's top level; ``total_timeout`` for all of it,
        default ``timeout`` times the tests plus one) or by ``program`` (one script within
        ``timeout``; pass = exit status 0).

        Returns the server's answer: ``status`` ("exit", "signal", "timeout" or "error"),
        ``exit_code``, ``seconds``, ``results`` (one character per test that ran: ``1``
        passed, ``0`` failed, ``T`` timed out, ``X`` crashed) and, with tests, ``defined``
        (whether the program's top level finished). Raises :class:`SandboxError` when the
        sandbox cannot start."""
        req = {"code": code, "timeout": float(timeout), "memory_mb": int(memory_mb)}
        if tests is not None:
            req["tests"] = [str(t) for t in tests]
            total = float(timeout) * (len(req["tests"]) + 1) if total_timeout is None else float(total_timeout)
            req["total_timeout"] = total
        else:
            req["program"] = program or ""
            total = float(timeout)
        data = json.dumps(req).encode("utf-8")
        with self._lock:
            for attempt in (0, 1):
                if self._proc is None or self._proc.poll() is not None:
                    self._kill_server()
                    self._start()
                try:
                    self._proc.stdin.write(struct.pack(">I", len(data)) + data)
                    self._proc.stdin.flush()
                    return self._recv(total + 10.0)
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


def check_sandbox(mode: str | None = None) -> str:
    """Start a sandbox in ``mode`` (default: the configured one) and run one program.
    Returns ``"bwrap"`` or ``"rlimits_only"`` (what programs will run under); raises
    :class:`SandboxError` with a one-line reason when programs cannot run that way."""
    sb = Sandbox(mode)
    try:
        res = sb.run("ok = 1", tests=["assert ok == 1"], timeout=10.0)
        if res.get("results") != "1":
            raise SandboxError(f"the code sandbox started but cannot run a program: "
                               f"{res.get('detail') or res.get('status')}")
        return "bwrap" if sb.sandboxed else "rlimits_only"
    finally:
        sb.close()


atexit.register(close_all)
