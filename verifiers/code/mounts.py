"""Which host folders the code sandbox shows, and the bubblewrap arguments that do it.

The sandbox starts from the host's root, read-only, and then hides parts of it: ``/tmp``
gets a private tmpfs, and (when the program will run as ``nobody``) every folder that
other users cannot enter is replaced by an empty tmpfs so that the folders Python needs
below it can be shown again, reachable. Whatever the sandbox itself needs (the
interpreter, the virtualenv, the standard library, the server script) must be bound back
into every hidden folder it lies under, and each folder on the way there must be made
enterable (bwrap would create them with mode 0700). Doing all of it from one list of
needed paths is what makes the sandbox start wherever the checkout and the virtualenv
live: under ``/tmp``, under a folder closed to others (``mktemp -d``, ``/root``), or on a
path with spaces.

Standard library only, like ``sandbox.py``, which imports it.
"""
from __future__ import annotations

import os
import site
import stat
import sys
import sysconfig
from typing import Callable, Iterable

TMP = "/tmp"


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both absolute and normalized)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def closed_to_others(path: str) -> bool:
    """Whether users other than the owner (and its group) cannot enter the folder ``path``."""
    try:
        return not os.stat(path).st_mode & stat.S_IXOTH
    except OSError:
        return False


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/a", "/a/b"]``: the folders above ``path``, without ``/``."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def outermost(paths: Iterable[str]) -> list[str]:
    """The paths (normalized, sorted) without those that lie inside another one."""
    kept: list[str] = []
    for p in sorted({os.path.normpath(p) for p in paths}):
        if p != "/" and not any(inside(p, k) for k in kept):
            kept.append(p)
    return kept


def hidden_folders(needed: Iterable[str], *, hide_closed: bool,
                   is_closed: Callable[[str], bool] = closed_to_others) -> list[str]:
    """The folders the sandbox covers with an empty tmpfs: ``/tmp`` and, with
    ``hide_closed``, the topmost folder closed to others above each needed path outside
    ``/tmp`` (inside ``/tmp`` every folder on the way is recreated, enterable)."""
    tops: list[str] = []
    for path in outermost(needed):
        if inside(path, TMP):
            continue
        if hide_closed:
            top = next((a for a in _ancestors(path) if is_closed(a)), None)
            if top is not None and not any(inside(top, t) for t in tops):
                tops = [t for t in tops if not inside(t, top)] + [top]
    return [TMP] + sorted(tops)


def bwrap_mounts(needed: Iterable[str], *, hide_closed: bool, tmp_bytes: int | None,
                 is_closed: Callable[[str], bool] = closed_to_others) -> list[str]:
    """bwrap arguments after ``--ro-bind / /``: the hidden folders' tmpfs mounts (``/tmp``
    limited to ``tmp_bytes``; None: no ``--size``, for bwrap older than 0.7), then each
    needed path under one of them bound back read-only, with the folders on the way
    created enterable (``--perms 0755 --dir``)."""
    needed = outermost(needed)
    hidden = hidden_folders(needed, hide_closed=hide_closed, is_closed=is_closed)
    args: list[str] = []
    for folder in hidden:
        if folder == TMP and tmp_bytes is not None:
            args += ["--size", str(tmp_bytes)]
        args += ["--perms", "0755", "--tmpfs", folder]
    made: set[str] = set(hidden)
    for path in needed:
        root = next((h for h in hidden if inside(path, h)), None)
        if root is None:
            continue  # visible as it is on the host
        for folder in _ancestors(path):
            if inside(folder, root) and folder not in made:
                made.add(folder)
                args += ["--perms", "0755", "--dir", folder]
        args += ["--ro-bind", path, path]
    return args


def python_paths() -> list[str]:
    """The folders this interpreter needs to start and to import from: the virtualenv
    (its ``pyvenv.cfg``), the base installation, the standard library, site-packages and
    the interpreter's own folder, both as named and with symlinks resolved (Python finds
    its virtualenv from the path it was started by)."""
    paths = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.abspath(sys.executable)),
             os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))
    try:
        paths.update(site.getsitepackages())
    except AttributeError:  # some embedded interpreters lack it
        pass
    found: set[str] = set()
    for p in paths:
        if p and os.path.isdir(p):
            found.add(os.path.abspath(p))
            found.add(os.path.realpath(p))
    return outermost(found)
