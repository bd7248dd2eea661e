"""On-disk cache of tokenized examples, so a second run (or the next stage reading the same
mixture) skips tokenization.

The key is a SHA-256 of everything the tokens depend on: each source's file contents (or
hub name and split), amount, the seed, the tokenizer's serialized vocabulary, merges and
special tokens, the chat template, the maximum length, the over-long policy and a format
version. Entries are ``<key>.npz`` files: for every field a flat int32 array plus row
offsets, and the stats as JSON. They are written to a temporary file and renamed, so a
crashed or concurrent writer never leaves a half-written entry behind.

Default directory ``~/.cache/posttrain/tokenized``; ``POSTTRAIN_CACHE`` overrides it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when tokenization changes in a way the key cannot see."""

Examples = list[dict[str, list[int]]]


def default_cache_dir() -> Path:
    """``$POSTTRAIN_CACHE`` or ``~/.cache/posttrain/tokenized``."""
    env = os.environ.get("POSTTRAIN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "posttrain" / "tokenized"


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sources_fingerprint(sources: Sequence[Any]) -> list[dict]:
    """What each ``DataSource`` contributes to the key: content hash for local files (a
    touched but unchanged file still hits), name and split for hub datasets."""
    from posttrain.data.mixer import is_local

    out = []
    for s in sources:
        entry: dict[str, Any] = {"amount": s.amount, "amount_type": type(s.amount).__name__}
        p = Path(s.path).expanduser()
        if is_local(s.path) and p.is_file():
            entry["sha256"] = file_digest(p)
        else:
            entry.update(name=s.path, split=s.split)
        out.append(entry)
    return out


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the tokenizer's full serialization (vocab, merges, normalizers, added and
    special tokens) and its chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # a slow tokenizer: its vocabulary is what we can see
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(
        {"class": type(tokenizer).__name__, "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
         "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id,
         "chat_template": getattr(tokenizer, "chat_template", None)},
        sort_keys=True, default=str).encode())
    return h.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    """SHA-256 of a JSON-serialisable description of everything the entry depends on."""
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def save_examples(path: str | Path, examples: Examples, stats: dict) -> None:
    """Write examples (dicts whose values are int lists, the same keys in every row) and
    stats to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = sorted(examples[0]) if examples else []
    arrays: dict[str, np.ndarray] = {"__stats__": np.frombuffer(json.dumps(stats).encode(), dtype=np.uint8),
                                     "__fields__": np.frombuffer(json.dumps(fields).encode(), dtype=np.uint8)}
    for f in fields:
        lengths = np.fromiter((len(e[f]) for e in examples), dtype=np.int64, count=len(examples))
        arrays[f"{f}.offsets"] = np.concatenate([[0], np.cumsum(lengths)])
        flat = [x for e in examples for x in e[f]]
        arrays[f"{f}.values"] = np.asarray(flat, dtype=np.int32)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_examples(path: str | Path) -> tuple[Examples, dict]:
    with np.load(path) as z:
        stats = json.loads(z["__stats__"].tobytes().decode())
        fields = json.loads(z["__fields__"].tobytes().decode())
        cols = {}
        for f in fields:
            values, offsets = z[f"{f}.values"].tolist(), z[f"{f}.offsets"].tolist()
            cols[f] = [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    n = len(cols[fields[0]]) if fields else 0
    return [{f: cols[f][i] for f in fields} for i in range(n)], stats


def cached(parts: dict[str, Any], build: Callable[[], tuple[Examples, dict]], cache_dir: str | Path | None = None,
           desc: str = "data") -> tuple[Examples, dict]:
    """Return the entry keyed by ``parts`` if it exists, else ``build()`` it and store it.
    A corrupt entry is rebuilt. The returned stats carry ``cache_hit``.

    Under several processes (every one calls this) each node's main process looks first
    and builds a missing entry while the others wait; they then read its file. So a mixture
    is tokenized once per node, not once per process. Per node rather than once per run:
    the cache folder (``~/.cache`` by default) may be on each node's own disk, where a
    run-wide main process's file would be invisible to the other nodes and all their
    processes would then tokenize at once; on a folder every node sees, the nodes' main
    processes tokenize side by side (the same wall time) and the atomic rename keeps one
    whole entry."""
    from posttrain.distributed import world_and_rank

    if world_and_rank()[0] == 1:  # no process group: creating accelerate's state could start one
        return _cached(parts, build, cache_dir, desc)
    import torch
    from accelerate import PartialState

    # As run_recipe creates it (then this returns that state): created here first without
    # cpu=True, accelerate would see one process on CPU processes and skip its barrier.
    state = PartialState(cpu=not torch.cuda.is_available())
    with state.local_main_process_first():
        try:
            return _cached(parts, build, cache_dir, desc)
        except Exception:
            # accelerate releases the waiting processes only when the main one leaves the
            # block normally; released here too, each meets the failure itself (the same
            # one-line data error) instead of a dead peer at the barrier.
            if state.is_local_main_process:
                state.wait_for_everyone()
            raise


def _cached(parts: dict[str, Any], build: Callable[[], tuple[Examples, dict]], cache_dir: str | Path | None,
            desc: str) -> tuple[Examples, dict]:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / f"{cache_key(parts)}.npz"
    if path.exists():
        try:
            examples, stats = load_examples(path)
            log.info("%s: %d tokenized examples from cache %s", desc, len(examples), path)
            return examples, {**stats, "cache_hit": True}
        except Exception as e:  # a foreign or damaged file: rebuild it
            log.warning("%s: ignoring unreadable cache entry %s (%s)", desc, path, e)
    examples, stats = build()
    try:
        save_examples(path, examples, stats)
    except OSError as e:  # a read-only cache directory must not stop training
        log.warning("%s: could not write cache %s (%s)", desc, path, e)
    return examples, {**stats, "cache_hit": False}
