"""SFT examples: mix the sources, tokenize each conversation with assistant-only labels,
apply the over-long policy, cache the result."""

from __future__ import annotations

import logging
from typing import Sequence

from posttrain.data.cache import cached, sources_fingerprint, tokenizer_fingerprint
from posttrain.data.chat import Overlong, chat_ids_and_labels, fit_length, validate_messages
from posttrain.data.mixer import mix
from posttrain.recipe.schema import DataSource

log = logging.getLogger(__name__)

BATCH = 256
"""Conversations per batched ``apply_chat_template`` call."""


def tokenize_rows(rows: Sequence, tokenizer, max_length: int, overlong: Overlong = "drop", desc: str = "sft"):
    """Tokenize conversations (``rows[i]["messages"]``) into ``(examples, stats)``;
    row numbers in errors are positions in ``rows``."""
    from tqdm.auto import tqdm

    examples: list[dict] = []
    stats = {"rows": len(rows), "kept": 0, "truncated": 0, "dropped": 0, "tokens": 0, "loss_tokens": 0}
    bar = tqdm(total=len(rows), desc=f"tokenize {desc}", unit="row", disable=len(rows) < 2000, mininterval=2.0)
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        # a datasets slice is a dict of columns; a list slice is rows
        convs = chunk["messages"] if isinstance(chunk, dict) else [r["messages"] for r in chunk]
        convs = [validate_messages(m, start + i) for i, m in enumerate(convs)]
        for ids, labels in chat_ids_and_labels(tokenizer, convs):
            ex, truncated = fit_length(ids, labels, max_length, overlong)
            stats["truncated"] += int(truncated and ex is not None)
            if ex is None:
                stats["dropped"] += 1
                continue
            examples.append(ex)
            stats["tokens"] += len(ex["input_ids"])
            stats["loss_tokens"] += sum(1 for x in ex["labels"] if x != -100)
        bar.update(len(convs))
    bar.close()
    stats["kept"] = len(examples)
    return examples, stats


def build_sft_examples(sources: Sequence[DataSource], tokenizer, max_length: int, overlong: Overlong = "drop",
                       seed: int = 0, cache_dir=None, desc: str = "sft") -> tuple[list[dict], dict]:
    """The tokenized SFT mixture: a list of ``{"input_ids", "labels"}`` (labels -100 off
    the assistant's tokens) and stats ``{rows, kept, truncated, dropped, tokens,
    loss_tokens, cache_hit}``. Cached on disk (see ``posttrain.data.cache``)."""
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
    parts = {"kind": "sft", "sources": sources_fingerprint(sources), "seed": seed,
             "tokenizer": tokenizer_fingerprint(tokenizer), "max_length": max_length, "overlong": overlong}

    def build():
        rows = mix(sources, seed)
        return tokenize_rows(rows, tokenizer, max_length, overlong, desc)

    examples, stats = cached(parts, build, cache_dir, desc)
    log.info("%s data: %d rows -> %d examples (%d truncated, %d dropped), %d tokens, %d with loss%s",
             desc, stats["rows"], stats["kept"], stats["truncated"], stats["dropped"], stats["tokens"],
             stats["loss_tokens"], " (cached)" if stats.get("cache_hit") else "")
    return examples, stats
