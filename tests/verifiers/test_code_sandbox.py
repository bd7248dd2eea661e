"""Hostile programs in the code sandbox: the host and the scoring run must survive."""
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from processes import processes_with
from posttrain.verifiers import score_rows
from posttrain.verifiers.code import Sandbox, verify_code

REPO = Path(__file__).resolve().parents[2]


def _tree(top: int) -> set[int]:
    """``top`` and the live processes below it (a zombie is dead already)."""
    try:
        root = psutil.Process(top)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    live = set()
    for proc in tree:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                live.add(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return live


def _idle(sandbox) -> set[int]:
    """What the sandbox itself runs between programs (bwrap, its init, the server): run
    this before the program under test; what lies below ``sandbox.pid`` after it, beyond
    these, is the program's. (Other sandboxes on the machine do not count, and the uid
    does not tell: as an ordinary user the server and the program share it.)"""
    sandbox.run("pass", tests=["assert True"])
    return _tree(sandbox.pid)


def _left_by_program(sandbox, idle: set[int]) -> list[int]:
    return sorted(_tree(sandbox.pid) - idle)


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
    sandbox.run("pass", tests=["assert True"])
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap not installed: fallback mode")
    assert sandbox.sandboxed


def test_infinite_loop_and_fork_bomb_are_killed_in_time(sandbox):
    idle = _idle(sandbox)
    marker = f"bomb{uuid.uuid4().hex}"
    t0 = time.monotonic()
    r = sandbox.run("while True:\n    pass", tests=["assert True"], timeout=1.0)
    assert r["status"] in ("timeout", "signal") and r["results"] == ""
    assert time.monotonic() - t0 < 10  # killed at its 1 s limit (the loop never ends)
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
    assert time.monotonic() - t0 < 15
    assert r["results"] == ""
    # nothing left: neither the setsid'ed sleeper nor any forked copy
    assert not _wait_gone(lambda: processes_with(marker))
    assert not _wait_gone(lambda: _left_by_program(sandbox, idle))
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

    marker = f"left{uuid.uuid4().hex}"
    sleeper = f"import subprocess\nsubprocess.Popen(['/bin/sh', '-c', 'sleep 300 # {marker}'], start_new_session=True)\n"
    rows = [
        row("def f():\n    return 1", ["assert f() == 1"]),
        row("while True:\n    pass"),
        row(sleeper + "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
        row("x = bytearray(8 << 30)"),
        row("import os\nos.kill(os.getppid(), 9)"),
        row("def g():\n    return 2", ["assert g() == 2", "assert g() == 3"]),
        row("def h():\n    return 3", ["assert h() == 3", sleeper + "import time\ntime.sleep(60)", "assert h() == 3"]),
    ]
    res = score_rows(rows, workers=2, timeout=20)
    assert [r.score for r in res] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.5, pytest.approx(2 / 3)]
    assert res.n_failed == 0  # the sandbox contained them: no verifier timeout or crash
    assert not _wait_gone(lambda: processes_with(marker))


def test_direct_verify_code_reasons():
    s, why = verify_code("while True: pass", {"tests": ["assert True"], "timeout": 1})
    assert s == 0.0 and ("timed out" in why or "CPU" in why)


# -- each test timed on its own -------------------------------------------------------------

SOLUTION = "def f(x):\n    return 2 * x\n"


def test_a_hanging_test_costs_only_itself(sandbox):
    tests = ["assert f(1) == 2", "assert f(2) == 4", "import time\ntime.sleep(60)",
             "assert f(3) == 6", "assert f(4) == 8"]
    t0 = time.monotonic()
    r = sandbox.run(SOLUTION, tests=tests, timeout=1.0, total_timeout=30.0)
    assert r["results"] == "11T11" and r["defined"]
    assert time.monotonic() - t0 < 20  # cut at the per-test limit, not the sleep or the cap


def test_crashing_tests_cost_only_themselves(sandbox):
    tests = [
        "assert f(1) == 2",
        "import os\nos._exit(0)",                              # the tester process ends
        "assert f(2) == 4",
        "import ctypes\nctypes.string_at(0)",                  # segfault
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
        "assert f(2) == 5",                                    # a plain failure
        "assert f(3) == 6",
    ]
    r = sandbox.run(SOLUTION, tests=tests, timeout=5.0)
    assert r["results"] == "1X1XX01"


def test_a_test_that_exhausts_memory_fails_alone(sandbox):
    tests = ["assert f(1) == 2", "x = bytearray(8 << 30)",
             "l = []\nwhile True:\n    l.append(' ' * 10**7)", "assert f(2) == 4"]
    r = sandbox.run(SOLUTION, tests=tests, timeout=5.0, memory_mb=256)
    assert r["results"] == "1001"


def test_tests_after_a_hang_or_crash_see_the_definitions_as_they_were(sandbox):
    # The definitions run once for the tests up to the hang; the tests after it get them
    # from a fresh run in a fresh work dir (so runs.txt holds one 'x' again, count is 0).
    code = "open('runs.txt', 'a').write('x')\ncount = 0\n"
    tests = [
        "assert open('runs.txt').read() == 'x'",
        "import time\ntime.sleep(60)",
        "import os\nos._exit(1)",
        "assert open('runs.txt').read() == 'x'",
        "count += 1\nassert count == 1",
        "assert count == 1",  # tests in one tester share the namespace, as in one script
    ]
    r = sandbox.run(code, tests=tests, timeout=1.0, total_timeout=30.0)
    assert r["results"] == "1TX111"


def test_the_total_cap_stops_the_rest(sandbox):
    t0 = time.monotonic()
    r = sandbox.run(SOLUTION, tests=["import time\ntime.sleep(60)"] * 6 + ["assert True"],
                    timeout=1.0, total_timeout=2.5)
    assert r["status"] == "timeout" and r["results"] == "TT"
    assert time.monotonic() - t0 < 20
    assert sandbox.run("x = 1", tests=["assert x == 1"])["results"] == "1"


def test_a_fork_bomb_in_one_test_leaves_the_next_tests_working(sandbox):
    idle = _idle(sandbox)
    marker = f"bomb{uuid.uuid4().hex}"
    bomb = (
        "import os, subprocess\n"
        f"subprocess.Popen(['/bin/sh', '-c', 'sleep 300 # {marker}'])\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    r = sandbox.run(SOLUTION, tests=["assert f(1) == 2", bomb, "assert f(2) == 4"], timeout=2.0, total_timeout=30.0)
    assert r["results"] == "1T1"
    assert not _wait_gone(lambda: processes_with(marker))
    assert not _wait_gone(lambda: _left_by_program(sandbox, idle))


def test_a_test_program_keeps_one_limit():
    t0 = time.monotonic()
    s, why = verify_code("def f(x):\n    return x\n",
                         {"program": "assert f(1) == 1\nimport time\ntime.sleep(60)\n", "timeout": 1})
    assert s == 0.0 and why == "timed out after 1s"
    assert time.monotonic() - t0 < 20


def test_verify_code_scores_each_test_and_says_which_failed():
    # 7 tests: 5 pass; test 3 hangs past the 1 s limit, test 6 crashes its process.
    tests = ["assert f(1) == 2", "assert f(2) == 4", "import time\ntime.sleep(60)", "assert f(3) == 6",
             "assert f(4) == 8", "import os\nos._exit(1)", "assert f(5) == 10"]
    s, why = verify_code(f"```python\n{SOLUTION}```", {"tests": tests, "timeout": 1})
    assert s == pytest.approx(5 / 7)
    assert why == "5/7 tests passed; test 3 timed out after 1s; test 6 crashed"


@pytest.mark.parametrize("res,reason", [
    ({"status": "exit", "exit_code": 0, "defined": True, "results": "111"}, None),
    ({"status": "exit", "exit_code": 0, "defined": True, "results": "1T0"},
     "1/3 tests passed; test 2 timed out after 5s"),
    ({"status": "exit", "exit_code": 0, "defined": True, "results": "XX1"}, "1/3 tests passed; tests 1, 2 crashed"),
    ({"status": "timeout", "exit_code": None, "defined": True, "results": "1"},
     "1/3 tests passed; stopped at the total limit of 8s after 1 tests"),
    ({"status": "exit", "exit_code": 3, "defined": False, "results": ""},
     "0/3 tests passed; the program raised before the tests"),
    ({"status": "timeout", "exit_code": None, "defined": False, "results": ""},
     "0/3 tests passed; the program's top level timed out after 5s"),
])
def test_tests_reason(res, reason):
    from posttrain.verifiers.code import tests_reason

    assert tests_reason(res, 3, 5.0, 8.0) == reason
