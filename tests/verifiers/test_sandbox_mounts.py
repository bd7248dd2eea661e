"""The sandbox's mount plan, worked out by hand for the placements that broke it."""
import os
import sys

from posttrain.verifiers.code.mounts import bwrap_mounts, hidden_folders, outermost, python_paths

DIR = ["--perms", "0755", "--dir"]


def bind(p):
    return ["--ro-bind", p, p]


def test_outermost_drops_nested_and_normalizes():
    assert outermost(["/a/b/c", "/a/b", "/a/bc", "/x/./y/", "/"]) == ["/a/b", "/a/bc", "/x/y"]


def test_checkout_in_a_closed_mktemp_folder_as_root():
    # The CI failure: /tmp/tmp.X (0700) holds the checkout and its virtualenv; Python lives
    # under /root (0700). Everything under /tmp comes back through the private /tmp, so
    # /tmp/tmp.X is not hidden a second time (that hid the server script); /root is.
    closed = {"/root", "/tmp/tmp.X"}
    needed = ["/tmp/tmp.X/repo/.venv", "/tmp/tmp.X/repo/verifiers/code",
              "/root/.pyenv/versions/3.11.7", "/root/.pyenv/versions/3.11.7/lib/python3.11"]
    assert hidden_folders(needed, hide_closed=True, is_closed=closed.__contains__) == ["/tmp", "/root"]
    assert bwrap_mounts(needed, hide_closed=True, tmp_bytes=100, is_closed=closed.__contains__) == [
        "--size", "100", "--perms", "0755", "--tmpfs", "/tmp",
        "--perms", "0755", "--tmpfs", "/root",
        *DIR, "/root/.pyenv", *DIR, "/root/.pyenv/versions", *bind("/root/.pyenv/versions/3.11.7"),
        *DIR, "/tmp/tmp.X", *DIR, "/tmp/tmp.X/repo", *bind("/tmp/tmp.X/repo/.venv"),
        *DIR, "/tmp/tmp.X/repo/verifiers", *bind("/tmp/tmp.X/repo/verifiers/code"),
    ]


def test_checkout_under_a_closed_home_is_bound_back_with_the_interpreter():
    # /root hides both; the server script's folder must come back too.
    closed = {"/root"}
    needed = ["/root/my repo/.venv", "/root/my repo/verifiers/code", "/usr"]
    assert bwrap_mounts(needed, hide_closed=True, tmp_bytes=1, is_closed=closed.__contains__) == [
        "--size", "1", "--perms", "0755", "--tmpfs", "/tmp",
        "--perms", "0755", "--tmpfs", "/root",
        *DIR, "/root/my repo", *bind("/root/my repo/.venv"),
        *DIR, "/root/my repo/verifiers", *bind("/root/my repo/verifiers/code"),
    ]


def test_topmost_closed_folder_wins_and_open_paths_stay_as_they_are():
    closed = {"/srv/a", "/srv/a/b", "/opt/x/y"}
    needed = ["/srv/a/b/c", "/srv/a/d", "/opt/x/y/z", "/usr/lib"]
    # /srv/a covers /srv/a/b; /opt/x/y is its own; /usr/lib is not hidden.
    assert hidden_folders(needed, hide_closed=True, is_closed=closed.__contains__) == ["/tmp", "/opt/x/y", "/srv/a"]


def test_an_ordinary_user_only_needs_tmp_bound_back():
    closed = {"/home/u"}
    needed = ["/home/u/repo/.venv", "/tmp/t/repo/verifiers/code"]
    assert bwrap_mounts(needed, hide_closed=False, tmp_bytes=1, is_closed=closed.__contains__) == [
        "--size", "1", "--perms", "0755", "--tmpfs", "/tmp",
        *DIR, "/tmp/t", *DIR, "/tmp/t/repo", *DIR, "/tmp/t/repo/verifiers", *bind("/tmp/t/repo/verifiers/code"),
    ]


def test_python_paths_cover_this_interpreter():
    paths = python_paths()
    for p in (sys.prefix, sys.base_prefix, os.path.realpath(sys.executable), os.__file__):
        assert any(p == k or p.startswith(k + "/") for k in paths), p


def test_no_size_option_for_old_bwrap():
    # bwrap before 0.7 has no --size: the private /tmp is mounted without it.
    assert bwrap_mounts(["/usr"], hide_closed=True, tmp_bytes=None, is_closed=lambda p: False) == [
        "--perms", "0755", "--tmpfs", "/tmp"]
