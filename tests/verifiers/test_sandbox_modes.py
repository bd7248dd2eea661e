"""Sandbox modes: a fallback to resource limits only when bwrap is not installed (or asked
for), an error quoting bwrap when it is installed but cannot start, and the mode reaching
the scoring workers through the environment."""
import os
import shutil
import stat
import time
import uuid

import pytest

from processes import processes_with
from posttrain.errors import PosttrainError
from posttrain.verifiers import score_rows
from posttrain.verifiers.code import (
    MODE_ENV,
    CodeSandboxUnavailable,
    Sandbox,
    SandboxError,
    check_code_sandbox,
    sandbox_mode,
    set_sandbox_mode,
)

BWRAP = shutil.which("bwrap")
needs_bwrap = pytest.mark.skipif(BWRAP is None, reason="bubblewrap (bwrap) not installed")


@pytest.fixture(autouse=True)
def _own_mode(monkeypatch):
    """Every test starts in mode auto and leaves the environment as it found it."""
    monkeypatch.setenv(MODE_ENV, "auto")
    yield
    from posttrain.verifiers.code.sandbox import close_all

    close_all()


@pytest.fixture
def no_bwrap_on_path(tmp_path, monkeypatch):
    """A PATH on which bwrap is not installed (the interpreter is found by its full path)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("bwrap") is None


@pytest.fixture
def broken_bwrap(tmp_path, monkeypatch):
    """The real bwrap, started with an option it rejects: installed, but it cannot start."""
    folder = tmp_path / "bin"
    folder.mkdir()
    wrapper = folder / "bwrap"
    wrapper.write_text(f'#!/bin/sh\nexec {BWRAP} --no-such-option "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")


@pytest.fixture
def bwrap_0_6(tmp_path, monkeypatch):
    """The real bwrap posing as 0.6.1 (Ubuntu 22.04's), which rejects --size as 0.6 does."""
    folder = tmp_path / "bin"
    folder.mkdir()
    wrapper = folder / "bwrap"
    wrapper.write_text(
        "#!/bin/sh\n"
        '[ "$1" = --version ] && { echo "bubblewrap 0.6.1"; exit 0; }\n'
        'for a in "$@"; do [ "$a" = --size ] && { echo "bwrap: Unknown option --size" >&2; exit 1; }; done\n'
        f'exec {BWRAP} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")


def _ok(sb: Sandbox) -> bool:
    return sb.run("x = 1", tests=["assert x == 1"])["results"] == "1"


def test_fallback_only_when_bwrap_is_not_installed(no_bwrap_on_path):
    sb = Sandbox()  # auto
    try:
        assert _ok(sb) and not sb.sandboxed
    finally:
        sb.close()
    with pytest.raises(SandboxError, match=r"bubblewrap \(bwrap\) is not installed.*rlimits_only"):
        Sandbox("bwrap").run("x = 1", tests=["assert True"])


@needs_bwrap
def test_installed_bwrap_that_cannot_start_is_an_error_with_its_message(broken_bwrap):
    for mode in ("auto", "bwrap"):
        sb = Sandbox(mode)
        with pytest.raises(SandboxError) as e:
            sb.run("x = 1", tests=["assert True"])
        msg = str(e.value)
        assert "bwrap is installed but the code sandbox cannot start inside it" in msg
        assert "--no-such-option" in msg  # bwrap's own words
        assert "\n" not in msg and not sb.sandboxed
    # asked for explicitly, resource limits alone still work
    sb = Sandbox("rlimits_only")
    try:
        assert _ok(sb) and not sb.sandboxed
    finally:
        sb.close()


@needs_bwrap
def test_bwrap_before_0_7_runs_sandboxed_without_size(bwrap_0_6, caplog, monkeypatch):
    from posttrain.verifiers.code import sandbox as sandbox_module

    assert sandbox_module.bwrap_version(shutil.which("bwrap")) == (0, 6, 1)
    monkeypatch.setattr(sandbox_module, "_warned", set())  # each warning is logged once per process
    sb = Sandbox("bwrap")
    try:
        with caplog.at_level("WARNING"):
            assert _ok(sb) and sb.sandboxed
        assert "bubblewrap 0.6.1 has no --size" in caplog.text
        # the private /tmp still hides the host's
        assert sb.run(f"import os\nok = not os.path.exists({str(shutil.which('bwrap'))!r})",
                      tests=["assert ok"])["results"] == "1"
    finally:
        sb.close()


@needs_bwrap
def test_default_and_bwrap_modes_run_sandboxed():
    for mode in (None, "bwrap"):
        sb = Sandbox(mode)
        try:
            assert _ok(sb) and sb.sandboxed
        finally:
            sb.close()


def test_mode_setting_and_bad_values(monkeypatch):
    set_sandbox_mode("rlimits_only")
    assert os.environ[MODE_ENV] == "rlimits_only" and sandbox_mode() == "rlimits_only"
    with pytest.raises(ValueError, match="expected one of auto, bwrap, rlimits_only"):
        set_sandbox_mode("docker")
    monkeypatch.setenv(MODE_ENV, "nope")
    with pytest.raises(SandboxError, match=f"{MODE_ENV}='nope'"):
        sandbox_mode()


def test_check_code_sandbox_refuses_in_one_line(no_bwrap_on_path):
    with pytest.raises(CodeSandboxUnavailable) as e:
        check_code_sandbox("bwrap")
    assert isinstance(e.value, PosttrainError)
    assert "\n" not in str(e.value) and "rlimits_only" in str(e.value)
    assert check_code_sandbox("rlimits_only") == "rlimits_only"


@needs_bwrap
def test_check_code_sandbox_with_bwrap():
    assert check_code_sandbox("bwrap") == "bwrap"


def test_the_mode_reaches_the_scoring_workers(no_bwrap_on_path):
    rows = [{"response": "x = 1", "dataset": "code", "ground_truth": ["assert x == 1"]}]
    set_sandbox_mode("bwrap")  # before the workers start
    res = score_rows(rows, workers=1, timeout=30)
    assert res.scores == [0.0] and res.n_errors == 1
    assert "bubblewrap (bwrap) is not installed" in res[0].reason
    set_sandbox_mode("rlimits_only")
    res = score_rows(rows, workers=1, timeout=30)
    assert res.scores == [1.0] and res.n_failed == 0


def test_resource_limits_only_still_kill_what_the_program_left():
    # Without bwrap's pid namespace: a sleeper in a session of its own, and a daemon made
    # the classic way (fork, setsid, fork again, the middle one exits), after a program
    # that ends cleanly, after a test that hangs and after one that crashes.
    marker = f"left{uuid.uuid4().hex}"
    sleeper = f"subprocess.Popen(['/bin/sh', '-c', 'sleep 300 # {marker}'], start_new_session=True)"
    daemon = ("pid = os.fork()\n"
              "if pid == 0:\n"
              "    os.setsid()\n"
              "    if os.fork() == 0:\n"
              f"        os.execv('/bin/sh', ['/bin/sh', '-c', 'sleep 300 # {marker}'])\n"
              "    os._exit(0)\n"
              "os.waitpid(pid, 0)\n")
    code = f"import os, subprocess\n{sleeper}\n{daemon}"
    sb = Sandbox("rlimits_only")
    try:
        for tests, expected in ((["assert True"], "1"),
                                (["import time\ntime.sleep(60)", "assert True"], "T1"),
                                (["os._exit(1)", "assert True"], "X1")):
            t0 = time.monotonic()
            res = sb.run(code, tests=[code + t if i == 0 else t for i, t in enumerate(tests)], timeout=2.0)
            assert not sb.sandboxed and res["results"] == expected, res
            assert time.monotonic() - t0 < 20
            assert processes_with(marker) == [], tests  # gone when run() returns: no waiting
    finally:
        sb.close()
