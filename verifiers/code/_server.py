"""Sandbox server: runs untrusted Python programs one at a time. Standard library only.

Started by ``posttrain.verifiers.code.sandbox`` (inside bubblewrap where available) and
spoken to over stdin/stdout: each message is a 4-byte big-endian length and a JSON object.
For each request it forks a child that makes a fresh work directory its cwd, starts a new
session, sets resource limits, drops to an unprivileged uid when running as root, and runs
the program with ``exec`` (no interpreter start per program). The server waits for the
child with a wall-clock deadline and then kills everything the child started.
"""
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
# Imported once here, before any fork: programs then get them for free, and they work even
# where the unprivileged program could not read the Python installation.
PRELOAD = (
    "abc array base64 bisect calendar cmath collections collections.abc copy csv dataclasses datetime "
    "decimal enum fractions functools hashlib heapq io itertools json math operator random re "
    "socket statistics string struct subprocess textwrap time typing unicodedata"
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


def _child(cfg, req, workdir, wfd):
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
    timeout = float(req.get("timeout", 5.0))
    mem = int(req.get("memory_mb", 1024)) * 1024 * 1024
    cpu = max(1, int(timeout + 0.999))
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
    tests = req.get("tests")
    if tests is not None:
        g = {"__name__": "__solution__", "__builtins__": __builtins__}
        try:
            exec(compile(code, "<solution>", "exec"), g)
        except BaseException:
            os._exit(3)
        for t in tests:
            try:
                exec(compile(t, "<test>", "exec"), g)
                ok = b"1"
            except BaseException:
                ok = b"0"
            os.write(wfd, ok)
        os._exit(0)
    g = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(code + "\n\n" + req.get("program", ""), "<program>", "exec"), g)
    except SystemExit as e:
        c = e.code
        os._exit(0 if c is None else c if isinstance(c, int) and 0 <= c < 256 else 1)
    except BaseException:
        os._exit(1)
    os._exit(0)


def _sandbox_procs_left(uid):
    left = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            left += 1
                        break
        except OSError:
            pass
    return left


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_all(cfg, pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    if cfg["killall"]:
        # In our own pid namespace every process of the sandbox uid is the program's: kill
        # them all, including any that left the process group with setsid().
        for _ in range(20):
            h = os.fork()
            if h == 0:
                try:
                    os.setuid(cfg["uid"])
                    os.kill(-1, signal.SIGKILL)
                except BaseException:
                    pass
                os._exit(0)
            os.waitpid(h, 0)
            _reap()
            if not _sandbox_procs_left(cfg["uid"]):
                break
            time.sleep(0.01)
    _reap()


def run(cfg, req):
    workdir = tempfile.mkdtemp(prefix="run-", dir=cfg["workroot"])
    if cfg["uid"] >= 0:
        os.chown(workdir, cfg["uid"], cfg["gid"])
    rfd, wfd = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            _child(cfg, req, workdir, wfd)
        finally:
            os._exit(4)
    os.close(wfd)
    timeout = float(req.get("timeout", 5.0))
    deadline = t0 + timeout
    pidfd = os.pidfd_open(pid)
    buf = b""
    status = None
    watch = [rfd, pidfd]
    while status is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select(watch, [], [], remaining)
        if rfd in ready:
            data = os.read(rfd, 4096)
            if data:
                buf = (buf + data)[:RESULT_CAP]
            else:
                watch.remove(rfd)
        if pidfd in ready:
            _, status = os.waitpid(pid, 0)
    timed_out = status is None
    _kill_all(cfg, pid)
    if timed_out:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = -1
    os.set_blocking(rfd, False)
    try:
        while len(buf) < RESULT_CAP:
            data = os.read(rfd, 4096)
            if not data:
                break
            buf += data
    except BlockingIOError:
        pass
    os.close(rfd)
    os.close(pidfd)
    shutil.rmtree(workdir, ignore_errors=True)
    if timed_out:
        kind, code = "timeout", None
    elif os.WIFSIGNALED(status):
        kind, code = "signal", -os.WTERMSIG(status)
    else:
        kind, code = "exit", os.WEXITSTATUS(status)
    return {"status": kind, "exit_code": code, "results": buf.decode("ascii", "replace"),
            "seconds": round(time.monotonic() - t0, 4)}


def _preload():
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:
            pass


def main():
    cfg = json.loads(sys.argv[1])
    _preload()
    os.makedirs(cfg["workroot"], exist_ok=True)
    if not cfg["sandboxed"]:
        try:  # orphans of the program come back to us to be reaped
            import ctypes

            ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
        except Exception:
            pass
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
