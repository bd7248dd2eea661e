"""Errors caused by the user's input (recipe, data, paths). The CLI prints their message
as one line and exits 2; anything else is a bug and keeps its traceback."""


class PosttrainError(Exception):
    """Bad input: the message says what and where, in one line."""


class DataError(PosttrainError):
    """A data file that cannot be used (missing, malformed rows, wrong columns)."""


class DiskFullError(PosttrainError):
    """The disk filled up while the run was writing."""


NEARLY_FULL = 16 * 2**20
"""Free bytes below which a failed write is put down to a full disk: libraries that write
through their own buffers (torch.save) report it as an unrelated-looking error."""


def disk_full_error(folder, exc: BaseException) -> DiskFullError | None:
    """A one-line ``DiskFullError`` when ``exc`` came from the disk of ``folder`` filling up
    (ENOSPC or EDQUOT anywhere in its chain, or hardly any space left there), else None."""
    import errno
    import os
    import shutil
    from pathlib import Path

    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    full = any((isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
               or os.strerror(errno.ENOSPC) in str(e) for e in chain)  # safetensors wraps it in its own error
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return None
    if not (full or (free < NEARLY_FULL and isinstance(exc, (OSError, RuntimeError)))):
        return None
    what = " ".join(str(exc).split()) or type(exc).__name__
    return DiskFullError(f"the disk of {folder} is full ({free // 2**20} MiB free) and a write failed ({what}); "
                         "everything written before is intact (checkpoints and models are written to a temporary "
                         "folder and renamed when complete): free some space and rerun the same command to resume")
