"""Loading datasets and mixing them, following open-instruct's ``dataset_mixer`` convention.

An amount written with a decimal point is a fraction of its dataset; an integer is a row
count. Either way the target size ``n`` is reached as open-instruct does: ``n // size``
whole copies in order, plus ``n % size`` distinct rows drawn with
``numpy.random.RandomState(seed)``. So ``0.5`` is a seeded random half, ``2.5`` two copies
and a random half, ``1000`` a random 1000 rows, and an integer larger than the dataset
upsamples (open-instruct does the same; it does not raise). The mixture is then shuffled
with the seed. Note ``amount: 1`` in YAML is *one row*; write ``1.0`` for the whole set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from posttrain.errors import DataError
from posttrain.recipe.schema import LOCAL_DATA_SUFFIXES, DataSource

log = logging.getLogger(__name__)

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}


def is_local(path: str) -> bool:
    """A local file (by suffix or because it exists) rather than a hub dataset name."""
    return path.endswith(LOCAL_DATA_SUFFIXES) or Path(path).expanduser().is_file()


def load_rows(source: DataSource, *, required: Sequence[str] = ("messages",)):
    """The rows of one source as a ``datasets.Dataset``: a local JSONL / JSON / Parquet /
    Arrow / CSV file, or a hub dataset name read with ``load_dataset(name, split=...)``.
    A missing or unreadable file, or a missing required column, raises ``DataError``."""
    import datasets

    path = source.path
    if is_local(path):
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataError(f"{path}: no such data file")
        builder = _BUILDERS.get(p.suffix.lower())
        if builder is None:
            raise DataError(f"{path}: unknown data file type {p.suffix!r} (use {', '.join(LOCAL_DATA_SUFFIXES)})")
        try:
            if builder == "arrow":
                try:
                    ds = datasets.Dataset.from_file(str(p))
                except Exception:  # an IPC stream file rather than a memory-mappable one
                    ds = datasets.load_dataset("arrow", data_files=str(p), split="train")
            else:
                ds = datasets.load_dataset(builder, data_files=str(p), split="train")
        except Exception as e:  # datasets raises many types for a malformed file
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{path}: cannot read as {builder}: {msg}") from None
    else:
        try:
            ds = datasets.load_dataset(path, split=source.split)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{path} (split {source.split}): cannot load dataset: {msg}") from None
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise DataError(f"{path}: no {', '.join(repr(c) for c in missing)} column (columns: {', '.join(ds.column_names) or 'none'})")
    return ds


def target_size(amount: float | int, size: int) -> int:
    """Rows an amount asks for: a float is a fraction of ``size``, an int a count."""
    if isinstance(amount, bool) or amount <= 0:
        raise DataError(f"amount must be > 0, got {amount!r}")
    if isinstance(amount, float):
        return int(amount * size)
    return int(amount)


def sample_indices(size: int, amount: float | int, seed: int) -> list[int]:
    """Row indices an amount selects: whole copies, then a seeded draw without
    replacement for the remainder (open-instruct's ``select_samples``)."""
    if size == 0:
        return []
    n = target_size(amount, size)
    full, extra = divmod(n, size)
    indices = list(range(size)) * full
    if extra:
        rng = np.random.RandomState(seed)
        indices.extend(rng.choice(size, size=extra, replace=False).tolist())
    return indices


def mix(sources: Sequence[DataSource], seed: int, *, required: Sequence[str] = ("messages",), shuffle: bool = True):
    """Load each source, take its amount, concatenate and shuffle with ``seed``. Only the
    required columns are kept so that sources with different extra columns concatenate."""
    import datasets

    if not sources:
        raise DataError("no data sources given")
    parts = []
    for src in sources:
        ds = load_rows(src, required=required)
        idx = sample_indices(len(ds), src.amount, seed)
        if len(ds) and len(idx) > len(ds):
            log.info("upsampling %s from %d to %d rows", src.path, len(ds), len(idx))
        ds = ds.select_columns(list(required)).select(idx)
        parts.append(ds)
    try:
        mixed = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    except ValueError as e:
        raise DataError(f"cannot mix {', '.join(s.path for s in sources)}: {str(e).splitlines()[0]}") from None
    if shuffle and len(mixed):
        mixed = mixed.shuffle(seed=seed)
    return mixed
