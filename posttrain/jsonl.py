"""JSON Lines in and out, shared by every command that reads rows or writes results."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from posttrain.errors import DataError


def read_jsonl(path: str | Path, required: Sequence[str] = ()) -> list[dict]:
    """The objects of a JSONL file, blank lines skipped. A file that cannot be read, a line
    that is not UTF-8 or not a JSON object, or a row without a ``required`` field is a
    ``DataError`` naming the file and line."""
    try:
        f = open(path, "rb")  # decoded line by line, so a bad byte is reported with its line
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    rows = []
    with f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: line {n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                                f"{e.start}); re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path}: line {n}: bad JSON ({getattr(e, 'msg', e)})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {n}: expected a JSON object")
            for key in required:
                if key not in row:
                    raise DataError(f"{path}: line {n}: missing field {key!r}")
            rows.append(row)
    return rows


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, then rename it over
    ``path``: a reader never sees half a file, and a crash leaves the previous file
    intact. The file gets the usual ``0666 & ~umask`` mode (mkstemp's 0600 would hide it
    from other users)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json_atomic(path: str | Path, obj) -> None:
    """One JSON document, indented, written atomically (``write_text_atomic``)."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> None:
    """Rows as JSON Lines, written atomically (``write_text_atomic``)."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
