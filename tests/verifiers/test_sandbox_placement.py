"""The code sandbox starts under bwrap wherever the checkout and its virtualenv live.

Each case builds a placement the way a user's checkout looks: a folder holding the
sandbox's own files (``verifiers/code``, copied) and a virtualenv (``python -m venv``),
somewhere on the disk, then starts the sandbox from that virtualenv's interpreter in a
subprocess, in mode ``bwrap`` (so a failure to start is an error, never a fallback), as
root and as an ordinary user (``nobody``, via setpriv). The program must run isolated:
a standard-library module the server did not preload imports (so ``nobody`` can read the
interpreter), its own work folder is writable, what it writes into the placement's
folders or the host's /tmp never reaches the host, and a process it started in a session
of its own is killed when the program ends.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

CODE_DIR = Path(__file__).resolve().parents[2] / "verifiers" / "code"
NOBODY = 65534
SETPRIV = shutil.which("setpriv")

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) not installed")

DRIVER = r'''
import json, os, sys, time, uuid
sys.path.insert(0, sys.argv[1])
from sandbox_copy.sandbox import Sandbox, SandboxError
args = json.loads(sys.argv[2])
marker = "left" + uuid.uuid4().hex  # made here: no process but the program's sleeper names it
code = """
import os, subprocess
subprocess.Popen(["/bin/sh", "-c", "sleep 300 # %s"], start_new_session=True)
escaped = []
for p in %r:
    try:
        open(p, "w").write("x")
        escaped.append(p)
    except OSError:
        pass
open("local.txt", "w").write("ok")
""" % (marker, args["targets"])
tests = [
    "assert open('local.txt').read() == 'ok'",
    "import difflib, xml.dom.minidom",            # not preloaded: read from the interpreter
    "import os; assert os.getuid() == %d" % args["uid"],
    "import sys; assert sys.prefix == %r" % sys.prefix,  # the virtualenv was found
]
def left():  # the program's setsid'ed sleeper, while the sandbox still runs
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                found.append(pid)
        except OSError:
            pass
    return found

sb = Sandbox(mode="bwrap")
try:
    res = sb.run(code, tests=tests, timeout=10)
    deadline = time.monotonic() + 3
    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({"sandboxed": sb.sandboxed, "results": res["results"], "status": res["status"],
                      "left": left()}))
except SandboxError as e:
    print(json.dumps({"error": str(e)}))
finally:
    sb.close()
'''


def _chown_tree(top: Path, uid: int) -> None:
    for folder, dirs, files in os.walk(top):
        os.lchown(folder, uid, uid)
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), uid, uid)


def _as_nobody() -> list[str]:
    return [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def _runs_as_nobody(python: str) -> bool:
    # (The kernel may start a binary nobody cannot reach, which then runs with another
    # installation's library: check that nobody can reach the interpreter it reports.)
    check = "import os, sys; assert sys.version_info >= (3, 9) and os.access(sys.executable, os.X_OK)"
    r = subprocess.run([*_as_nobody(), python, "-c", check], capture_output=True, timeout=60)
    return r.returncode == 0


@pytest.fixture(scope="module")
def user_python() -> tuple[list[str], str, int]:
    """(command prefix, interpreter, uid) for running as an ordinary user: this user when
    not root, else ``nobody`` through setpriv with an interpreter nobody can run."""
    if os.geteuid() != 0:
        return [], getattr(sys, "_base_executable", sys.executable), os.geteuid()
    if SETPRIV is None:
        pytest.skip("setpriv not installed: cannot run as an ordinary user")
    for python in (getattr(sys, "_base_executable", sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(python) and _runs_as_nobody(python):
            return _as_nobody(), python, NOBODY
    pytest.skip("no Python interpreter that nobody may run")


def _place(base: Path, python: str) -> Path:
    """A checkout-like folder in ``base``: the sandbox's files and a virtualenv."""
    repo = base / "my repo"  # a space in the path as well
    pkg = repo / "verifiers" / "sandbox_copy"
    pkg.mkdir(parents=True)
    for name in ("sandbox.py", "mounts.py", "_server.py"):
        shutil.copy(CODE_DIR / name, pkg / name)
    (pkg / "__init__.py").write_text("")
    (repo / "driver.py").write_text(DRIVER)
    subprocess.run([python, "-m", "venv", "--without-pip", str(repo / ".venv")], check=True,
                   capture_output=True, timeout=120)
    return repo


def _start_in(repo: Path, prefix: list[str], uid: int) -> None:
    host_tmp = Path("/tmp") / f"sbx-placement-{uuid.uuid4().hex}"
    targets = [str(repo / "escaped.txt"), str(repo.parent / "escaped.txt"), str(host_tmp)]
    cmd = [*prefix, str(repo / ".venv" / "bin" / "python"), str(repo / "driver.py"),
           str(repo / "verifiers"), json.dumps({"targets": targets, "uid": uid})]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd="/")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "error" not in out, out["error"]
    assert out["sandboxed"] and out["results"] == "1111", out
    assert out["left"] == [], out  # killed by the server, not only when the sandbox closes
    for t in targets:
        assert not os.path.exists(t), t


@pytest.fixture
def made():
    folders: list[Path] = []
    yield folders
    for f in folders:
        shutil.rmtree(f, ignore_errors=True)


def _mkdtemp(made: list, mode: int, parent: str | None = None, prefix: str = "sbx-place-") -> Path:
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    made.append(base)
    os.chmod(base, mode)
    return base


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@root_only
@pytest.mark.parametrize("mode,prefix", [
    (0o700, "sbx-place-"),          # mktemp -d under /tmp: closed to other users
    (0o755, "sbx-place-"),          # an open folder under /tmp
    (0o700, "sbx place with spaces-"),
])
def test_as_root_under_tmp(made, mode, prefix):
    base = _mkdtemp(made, mode, prefix=prefix)
    repo = _place(base, getattr(sys, "_base_executable", sys.executable))
    _start_in(repo, [], NOBODY)


@root_only
def test_as_root_under_the_home_folder():
    """/root, closed to other users, as in containers that run as root."""
    home = Path.home()
    if home == Path("/") or not os.access(home, os.W_OK):
        pytest.skip("no writable home folder")
    base = Path(tempfile.mkdtemp(prefix="sbx-place-", dir=home))
    try:
        repo = _place(base, getattr(sys, "_base_executable", sys.executable))
        _start_in(repo, [], NOBODY)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("mode,prefix", [
    (0o700, "sbx place with spaces-"),   # the user's own mktemp -d, closed to others
    (0o755, "sbx-place-"),
])
def test_as_an_ordinary_user(made, user_python, mode, prefix):
    cmd_prefix, python, uid = user_python
    base = _mkdtemp(made, mode, prefix=prefix)
    repo = _place(base, python)
    if os.geteuid() == 0:
        _chown_tree(base, uid)
    assert bool(os.stat(base).st_mode & stat.S_IXOTH) == (mode == 0o755)
    _start_in(repo, cmd_prefix, uid)
