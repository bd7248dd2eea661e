"""Hostile programs in the code sandbox: the host and the scoring run must survive."""
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from posttrain.verifiers import score_rows
from posttrain.verifiers.code import Sandbox, verify_code
from posttrain.verifiers.code.sandbox import SANDBOX_UID

REPO = Path(__file__).resolve().parents[2]


def _procs_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(name))
            except OSError:
                pass
    return found


def _procs_of_uid(uid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status") as f:
                    for line in f:
                        if line.startswith("Uid:"):
                            if int(line.split()[1]) == uid:
                                out.append(int(name))
                            break
            except OSError:
                pass
    return out


def _wait_gone(fn, seconds=3.0):
    deadline = time.monotonic() + seconds
    while fn() and time.monotonic() < deadline:
        time.sleep(0.05)
    return fn()


@pytest.fixture(scope="module")
def sandbox():
    sb = Sandbox()
    yield sb
    sb.close()


def test_uses_bwrap_when_installed(sandbox):
    import shutil

    sandbox.run("pass", tests=["assert True"])
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap not installed: fallback mode")
    assert sandbox.sandboxed


def test_infinite_loop_and_fork_bomb_are_killed_in_time(sandbox):
    marker = f"bomb{uuid.uuid4().hex}"
    t0 = time.monotonic()
    r = sandbox.run("while True:\n    pass", tests=["assert True"], timeout=1.0)
    assert r["status"] in ("timeout", "signal") and r["results"] == ""
    assert time.monotonic() - t0 < 3
    bomb = (
        "import os, subprocess\n"
        f"subprocess.Popen(['/bin/sh', '-c', 'sleep 300 # {marker}'], start_new_session=True)\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    t0 = time.monotonic()
    r = sandbox.run(bomb, tests=["assert True"], timeout=2.0)
    assert time.monotonic() - t0 < 6
    assert r["results"] == ""
    # nothing left: neither the setsid'ed sleeper nor any forked copy
    assert not _wait_gone(lambda: _procs_with(marker))
    if os.geteuid() == 0:
        assert not _wait_gone(lambda: _procs_of_uid(SANDBOX_UID))
    # and the sandbox still works
    assert sandbox.run("x = 1", tests=["assert x == 1"])["results"] == "1"


def test_memory_bomb(sandbox):
    r = sandbox.run("x = bytearray(8 << 30)", tests=["assert True"], timeout=5.0)
    assert r["results"] == ""
    r = sandbox.run("l = []\nwhile True:\n    l.append(' ' * 10**7)", tests=["assert True"], timeout=5.0)
    assert r["results"] == ""


def test_cannot_write_outside_the_work_dir(sandbox, tmp_path):
    host_tmp = Path("/tmp") / f"sbx-escape-{uuid.uuid4().hex}"
    in_repo = REPO / f"sbx-escape-{uuid.uuid4().hex}"
    in_tmp_path = tmp_path / "escape.txt"
    code = (
        "import os\n"
        "written = []\n"
        f"for p in [{str(host_tmp)!r}, {str(in_repo)!r}, {str(in_tmp_path)!r}, 'local.txt']:\n"
        "    try:\n"
        "        open(p, 'w').write('x')\n"
        "        written.append(p)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    r = sandbox.run(code, tests=["assert 'local.txt' in written"], timeout=5.0)
    assert r["results"] == "1"  # the work dir is writable
    assert not host_tmp.exists() and not in_repo.exists() and not in_tmp_path.exists()


def test_no_network_to_the_host(sandbox):
    sandbox.run("pass", tests=["assert True"])
    if not sandbox.sandboxed and os.geteuid() != 0:
        pytest.skip("no network isolation without bwrap or root")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(4.0)
    port = srv.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(srv.accept())
        except OSError:
            pass

    th = threading.Thread(target=accept)
    th.start()
    code = (
        "import socket\n"
        "ok = False\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "    ok = True\n"
        "except OSError:\n"
        "    pass\n"
    )
    r = sandbox.run(code, tests=["assert ok"], timeout=5.0)
    th.join()
    srv.close()
    assert r["results"] == "0"
    assert not accepted


def test_cannot_kill_the_parent(sandbox):
    code = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, signal.SIGKILL)"
    r = sandbox.run(code, tests=["assert True"], timeout=5.0)
    assert r["results"] == ""
    assert sandbox.run("y = 2", tests=["assert y == 2"])["results"] == "1"


def test_hostile_rows_in_a_scoring_run():
    def row(code, tests=("assert True",), timeout=1.0):
        return {"response": f"```python\n{code}\n```", "dataset": "code",
                "ground_truth": {"tests": list(tests), "timeout": timeout}}

    rows = [
        row("def f():\n    return 1", ["assert f() == 1"]),
        row("while True:\n    pass"),
        row("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
        row("x = bytearray(8 << 30)"),
        row("import os\nos.kill(os.getppid(), 9)"),
        row("def g():\n    return 2", ["assert g() == 2", "assert g() == 3"]),
    ]
    t0 = time.monotonic()
    res = score_rows(rows, workers=2, timeout=20)
    assert time.monotonic() - t0 < 20
    assert [r.score for r in res] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.5]
    assert res.n_failed == 0  # the sandbox contained them: no verifier timeout or crash
    if os.geteuid() == 0:
        assert not _wait_gone(lambda: _procs_of_uid(SANDBOX_UID))


def test_direct_verify_code_reasons():
    s, why = verify_code("while True: pass", {"tests": ["assert True"], "timeout": 1})
    assert s == 0.0 and ("timed out" in why or "CPU" in why)
