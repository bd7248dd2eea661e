"""Sandbox server: runs untrusted Python programs one at a time. Standard library only.

Started by ``posttrain.verifiers.code.sandbox`` (inside bubblewrap where available) and
spoken to over stdin/stdout: each message is a 4-byte big-endian length and a JSON object.
For each request it forks a child that makes a fresh work directory its cwd, starts a new
session, sets resource limits, drops to an unprivileged uid when running as root, and runs
the program with ``exec`` (no interpreter start per program). The server waits for the
child with a wall-clock deadline and then kills everything the child started.

Tests (a list of statements) are each timed on their own. The child runs the program's
top level once (its definitions), reports ``D``, then runs the tests in order in the same
process, one result byte per test; the server gives each test the per-test limit from the
previous byte. So the common case costs one fork per program, as a single time budget
did. A test that runs past its limit is killed with everything the child started and
reported as ``T``; one that kills the child (a crash, ``os._exit``, the memory limit) as
``X``. The tests after it then run in a second child that runs the definitions again and
forks a tester for them, which it watches the same way (a test that hangs is killed and
a new tester forked from the same definitions goes on with the next test). So a hanging
or crashing test costs only itself; the definitions run once, twice in a program with
such a test. The server's own deadline is the per-test limit until ``D`` and the total
cap over everything.
"""
import gc
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time

RESULT_CAP = 1 << 16
# Bound before any program runs: a program that rebinds os.fork, exec or time.monotonic in
# its own namespace (they are shared module objects) must not break the test runner.
_fork, _pipe, _read, _write, _close, _exit = os.fork, os.pipe, os.read, os.write, os.close, os._exit
_waitpid, _pidfd_open, _kill, _killpg, _setpgid = os.waitpid, os.pidfd_open, os.kill, os.killpg, os.setpgid
_set_blocking, _select, _monotonic, _sleep = os.set_blocking, select.select, time.monotonic, time.sleep
_exec, _compile = exec, compile
_prctl = None  # libc's prctl, bound in main()
PR_SET_CHILD_SUBREAPER = 36
DEFINED, TIMED_OUT, CRASHED = b"D", b"T", b"X"
# Imported once here, before any fork: programs then get them for free, and they work even
# where the unprivileged program could not read the Python installation (resource limits
# only, as root, with Python under /root: there nothing else imports). encodings.idna is
# what socket.create_connection() imports for a host name.
PRELOAD = (
    "abc array base64 bisect calendar cmath collections collections.abc contextlib copy csv dataclasses "
    "datetime decimal encodings.idna enum fractions functools hashlib heapq io itertools json math "
    "numbers operator pprint queue random re socket statistics string struct subprocess textwrap time "
    "traceback typing unicodedata"
).split()


def _read_msg(f):
    head = f.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    return json.loads(f.read(n).decode("utf-8"))


def _write_msg(f, obj):
    data = json.dumps(obj).encode("utf-8")
    f.write(struct.pack(">I", len(data)) + data)
    f.flush()


def _unshare_net():
    """Best effort, outside bubblewrap: a new, empty network namespace (root only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare(0x40000000)  # CLONE_NEWNET
    except Exception:
        pass


def _child(cfg, req, workdir, wfd, isolate_from=None):
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    keep = sorted({0, 1, 2, wfd})
    for lo, hi in zip(keep, keep[1:] + [65536]):
        os.closerange(lo + 1, hi)
    os.chdir(workdir)
    os.environ.clear()
    os.environ.update({"HOME": workdir, "TMPDIR": workdir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    tempfile.tempdir = workdir
    tests = req.get("tests")
    # CPU time backs up the wall-clock limits (the server's and the per-test ones).
    seconds = float(req.get("total_timeout", req["timeout"]) if tests is not None else req["timeout"])
    mem = int(req.get("memory_mb", 1024)) * 1024 * 1024
    cpu = max(1, int(seconds + 0.999))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    if cfg["nproc"] > 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
    if cfg["uid"] >= 0:
        if not cfg["sandboxed"]:
            _unshare_net()
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
    code = req["code"]
    if tests is not None:
        g = {"__name__": "__solution__", "__builtins__": __builtins__}
        try:
            _exec(_compile(code, "<solution>", "exec"), g)
        except BaseException:
            _exit(3)
        _write(wfd, DEFINED)
        tests = [str(t) for t in tests]
        if isolate_from is None:
            _run_tests_inline(g, tests, wfd)
        else:
            _run_tests(g, tests[isolate_from:], float(req["timeout"]), wfd)
        _exit(0)
    g = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(code + "\n\n" + req.get("program", ""), "<program>", "exec"), g)
    except SystemExit as e:
        c = e.code
        os._exit(0 if c is None else c if isinstance(c, int) and 0 <= c < 256 else 1)
    except BaseException:
        os._exit(1)
    os._exit(0)


def _run_tests_inline(g, tests, wfd):
    """Each test in this process, one result byte each as soon as it is known. The server
    times every test from the previous byte: one that hangs is killed there, one that
    crashes this process ends it; either way the server goes on with the tests after it
    in forked testers (``run``)."""
    for t in tests:
        try:
            _exec(_compile(t, "<test>", "exec"), g)
            ok = b"1"
        except BaseException:
            ok = b"0"
        _write(wfd, ok)


def _tester(g, tests, out):
    """Runs in a fork of the child that holds the definitions: each test, one byte each."""
    _setpgid(0, 0)  # its own group: a hanging test is killed with all it started
    _run_tests_inline(g, tests, out)
    _exit(0)


def _reap_nohang():
    while True:
        try:
            pid, _ = _waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _fork_tester():
    """fork(), retried while the process limit is still held by a killed test's processes
    (they come back to this process, a subreaper, to be reaped)."""
    for _ in range(100):
        try:
            return _fork()
        except BlockingIOError:
            _reap_nohang()
            _sleep(0.005)
    return None


def _run_tests(g, tests, per_test, wfd):
    """Run ``tests`` in forked testers, each test within ``per_test`` seconds; write one
    result byte per test to ``wfd``: 1 passed, 0 failed, T timed out, X crashed."""
    if _prctl is not None:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    i = 0
    while i < len(tests):
        rfd, out = _pipe()
        pid = _fork_tester()
        if pid is None:  # the processes of earlier tests do not go away
            _write(wfd, CRASHED * (len(tests) - i))
            return
        if pid == 0:
            _close(rfd)
            _close(wfd)
            _tester(g, tests[i:], out)
        _close(out)
        done = 0

        def forward(data):
            nonlocal done
            done += len(data)
            _write(wfd, data)
            return _monotonic() + per_test

        status = _wait_child(pid, rfd, _monotonic() + per_test, forward)
        i += done
        try:
            _killpg(pid, signal.SIGKILL)  # the tester's group: whatever its tests started
        except OSError:
            pass
        if status is None:  # the test in progress hangs: it alone fails
            _waitpid(pid, 0)
            _write(wfd, TIMED_OUT)
            i += 1
        elif i < len(tests):  # the tester died in the middle of test i
            _write(wfd, CRASHED)
            i += 1
        _reap_nohang()
        _close(rfd)


def _wait_child(pid, rfd, deadline, on_data):
    """Wait until child ``pid`` exits or ``deadline`` passes, handing what it writes to
    ``rfd`` to ``on_data(bytes)``, which returns the new deadline. Returns the wait status,
    or None on timeout. Reads what is left in the pipe either way."""
    pidfd = _pidfd_open(pid)
    watch = [rfd, pidfd]
    status = None
    try:
        while status is None:
            remaining = deadline - _monotonic()
            if remaining <= 0:
                break
            ready, _, _ = _select(watch, [], [], remaining)
            if rfd in ready:
                data = _read(rfd, 4096)
                if data:
                    deadline = on_data(data)
                else:
                    watch.remove(rfd)
            if pidfd in ready:
                _, status = _waitpid(pid, 0)
        # What the child wrote just before it exited (its descendants may hold the pipe
        # open, so read only what is there).
        _set_blocking(rfd, False)
        while True:
            data = _read(rfd, 4096)
            if not data:
                break
            on_data(data)
    except BlockingIOError:
        pass
    finally:
        _close(pidfd)
    return status


def _others_left():
    """Live processes of this pid namespace other than its init (pid 1) and the server."""
    me, left = os.getpid(), 0
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, me):
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != b"Z":  # a zombie is dead already; its parent reaps it
                left += 1
    return left


def _reap():
    """Reap exited children; True when children are still running."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _descendants(top):
    """Live processes below ``top`` (from /proc: the parent is field 4 of stat)."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != b"Z":
                parent[int(name)] = int(fields[1])
    below, grew = {top}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in below} - below
        below |= more
        grew = bool(more)
    return below - {top}


def _kill_all(cfg, pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    if not cfg["killall"]:
        # Without a pid namespace the server is a child subreaper (main()): whatever the
        # program left running (testers in groups of their own, processes that called
        # setsid()) is still below it, and nothing else is. Kill that tree. (The /proc scan
        # runs only while a child is left: otherwise this costs one waitpid.)
        for _ in range(50):
            if not _reap():
                break
            for p in _descendants(os.getpid()):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.002)
    # Inside bubblewrap the server has a pid namespace to itself: besides its init (pid 1,
    # bwrap's) and the server, every process in it is the program's. kill(-1) reaches all of
    # them, including any that left the process group with setsid(), and spares the caller
    # and init. (Listing this namespace's /proc is cheap.) This holds as root and as an
    # ordinary user alike: the pid namespace, not the uid, tells the program's processes.
    if cfg["killall"]:
        for _ in range(50):
            _reap()
            if not _others_left():
                break
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            time.sleep(0.002)
    _reap()


def _attempt(cfg, req, t0, deadline_of, isolate_from=None):
    """Fork a child for ``req`` and wait for it: ``(wait status or None on timeout, bytes
    it wrote)``. ``deadline_of(buf)`` is the deadline given what it has written so far."""
    workdir = tempfile.mkdtemp(prefix="run-", dir=cfg["workroot"])
    if cfg["uid"] >= 0:
        os.chown(workdir, cfg["uid"], cfg["gid"])
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            _child(cfg, req, workdir, wfd, isolate_from)
        finally:
            os._exit(4)
    os.close(wfd)
    buf = bytearray()

    def collect(data):
        buf.extend(data[: RESULT_CAP - len(buf)])
        return deadline_of(buf)

    status = _wait_child(pid, rfd, deadline_of(buf), collect)
    timed_out = status is None
    _kill_all(cfg, pid)
    if timed_out:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = -1
    os.close(rfd)
    shutil.rmtree(workdir, ignore_errors=True)
    return (None if timed_out else status), bytes(buf)


def _response(status, out, t0, tests):
    if status is None:
        kind, code = "timeout", None
    elif os.WIFSIGNALED(status):
        kind, code = "signal", -os.WTERMSIG(status)
    else:
        kind, code = "exit", os.WEXITSTATUS(status)
    resp = {"status": kind, "exit_code": code, "seconds": round(time.monotonic() - t0, 4)}
    if tests:
        resp["defined"] = out[:1] == DEFINED
        out = out[1:] if resp["defined"] else b""
    resp["results"] = out.decode("ascii", "replace")
    return resp


def run(cfg, req):
    """Run one request. A test program: one child within one limit. Tests: one child runs
    the definitions and then the tests in order, each timed from the previous result
    (no process per test: the common case costs one fork). If a test hangs (killed at its
    limit, ``T``) or crashes the child (``X``), the tests after it run in a new child that
    runs the definitions again and forks a tester for them, as ``_run_tests`` does, so a
    second bad test again costs only itself."""
    t0 = time.monotonic()
    tests = "tests" in req
    timeout = float(req.get("timeout", 5.0))
    total = float(req.get("total_timeout", timeout)) if tests else timeout
    end = t0 + total
    if not tests:
        status, out = _attempt(cfg, req, t0, lambda buf: t0 + timeout)
        return _response(status, out, t0, False)
    marks = {"start": t0}

    def inline_deadline(buf):
        # The top level gets the per-test limit, then each test its own from the last byte.
        now = time.monotonic()
        if len(buf) != marks.get("n"):
            marks["n"], marks["at"] = len(buf), now
        return min(end, marks["at"] + timeout)

    status, out = _attempt(cfg, req, t0, inline_deadline)
    n = len(req["tests"])
    done = len(out) - 1  # results after the D byte
    if out[:1] != DEFINED or done >= n or (status is None and time.monotonic() >= end):
        return _response(status, out, t0, True)
    # Test ``done`` hung (the child was killed at its limit) or crashed the child.
    out += TIMED_OUT if status is None else CRASHED
    done += 1
    if done >= n:
        return _response(0, out, t0, True)  # every test has its result: an ordinary end
    t1 = time.monotonic()
    status, more = _attempt(cfg, req, t0, lambda buf: t1 + min(timeout, end - t1) if buf[:1] != DEFINED else end,
                            isolate_from=done)
    if more[:1] == DEFINED:
        out += more[1:]
    return _response(status, out, t0, True)


def _preload():
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:
            pass


def main():
    global _prctl
    cfg = json.loads(sys.argv[1])
    _preload()
    # What is loaded now lives as long as the server: keep the collector from touching it
    # in every forked program (each touch copies a page after fork()).
    gc.freeze()
    try:
        import ctypes

        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    except Exception:
        pass
    os.makedirs(cfg["workroot"], exist_ok=True)
    if not cfg["sandboxed"] and _prctl is not None:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the program come back to us to be reaped
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    # Nothing the programs print may reach the protocol stream.
    sys.stdout = sys.stderr
    _write_msg(out, {"ready": True, "pid": os.getpid()})
    while True:
        req = _read_msg(inp)
        if req is None:
            return
        try:
            resp = run(cfg, req)
        except Exception as e:  # a bug here must not look like a program's failure
            resp = {"status": "error", "exit_code": None, "results": "", "detail": f"{type(e).__name__}: {e}"}
        _write_msg(out, resp)


if __name__ == "__main__":
    main()
