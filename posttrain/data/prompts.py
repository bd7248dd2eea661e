"""RLVR prompts: rows with the prompt turns, the verifier(s) that score a response and
their ground truth, as open-instruct's RLVR data sets hold them
(``allenai/RLVR-GSM-MATH-IF-Mixed-Constraints``: ``messages``, ``ground_truth``,
``dataset``).

A row gives its prompt as ``messages`` (the turns before the answer; a trailing assistant
turn is dropped) or as ``prompt`` (one user message). Sources are mixed with the same
amounts convention as SFT (``posttrain.data.mixer``). Rows stay Python objects rather than
one ``datasets`` table: ground truths differ in type between sources (a number, a string,
a JSON object for IFEval), which Arrow cannot put in one column.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from posttrain.errors import DataError
from posttrain.recipe.schema import DataSource

log = logging.getLogger(__name__)

REQUIRED = ("dataset", "ground_truth")


@dataclass
class Prompt:
    """One RLVR prompt, tokenized."""

    token_ids: list[int]
    """The prompt in the chat template, ending in the generation prompt."""
    messages: list[dict]
    """The prompt turns."""
    dataset: str | list[str]
    """Verifier name(s)."""
    ground_truth: Any
    """What the verifier(s) compare against."""
    source: str = ""
    """``file:row`` of the row, for error messages and the rollout log."""
    extra: dict = field(default_factory=dict)
    """Other columns of the row (kept for ``posttrain generate`` output)."""

    def score_row(self, response: str) -> dict:
        """The row ``posttrain.verifiers.Scorer`` scores for one response to this prompt."""
        return {"response": response, "dataset": self.dataset, "ground_truth": self.ground_truth,
                "prompt": self.messages[-1]["content"]}


def prompt_messages(row: dict, where: str) -> list[dict]:
    """The conversation to complete: ``messages`` minus any trailing assistant turn, or
    ``prompt`` as one user message."""
    msgs = row.get("messages")
    if isinstance(msgs, str):  # some hub exports store the list as a JSON string
        try:
            msgs = json.loads(msgs)
        except ValueError:
            msgs = None
    if isinstance(msgs, list) and msgs:
        msgs = list(msgs)
        while msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
            msgs.pop()
        if msgs:
            return msgs
    if isinstance(row.get("prompt"), str) and row["prompt"].strip():
        return [{"role": "user", "content": row["prompt"]}]
    raise DataError(f"{where}: needs `messages` (prompt turns) or `prompt`")


def check_verifiers(prompts: Sequence[Prompt], what: str) -> None:
    """Every verifier the rows name must exist: fail before any training otherwise."""
    from posttrain.verifiers.registry import get_verifier

    names: dict[str, str] = {}
    for p in prompts:
        for n in p.dataset if isinstance(p.dataset, list) else [p.dataset]:
            names.setdefault(n, p.source)
    for name, where in sorted(names.items()):
        try:
            get_verifier(name)
        except ValueError as e:
            raise DataError(f"{what}: {where}: {e}") from None


def _read_source(src: DataSource) -> list[dict]:
    from posttrain.data.mixer import load_rows

    ds = load_rows(src, required=REQUIRED)
    return [dict(r) for r in ds]


def build_prompts(sources: Sequence[DataSource], tokenizer, max_prompt_length: int, seed: int,
                  *, what: str = "prompts", shuffle: bool = True) -> tuple[list[Prompt], dict]:
    """Load, mix (amounts as in SFT, shuffled with ``seed``) and tokenize prompt rows.
    ``shuffle=False`` keeps the sources' order (an eval set whose first N rows are meant,
    as ``posttrain eval --limit``). Prompts longer than ``max_prompt_length`` tokens are
    dropped and counted. Returns the prompts and stats ``{rows, kept, dropped_long}``.
    Bad rows raise ``DataError`` naming the file and row."""
    from posttrain.data.chat import prompt_ids
    from posttrain.data.mixer import sample_indices

    if not sources:
        raise DataError(f"{what}: no data sources given")
    rows: list[tuple[dict, str]] = []
    for src in sources:
        source_rows = _read_source(src)
        for i in sample_indices(len(source_rows), src.amount, seed):
            rows.append((source_rows[i], f"{src.path}: row {i}"))
    order = np.random.default_rng(seed).permutation(len(rows)).tolist() if rows and shuffle else list(range(len(rows)))
    prompts: list[Prompt] = []
    dropped = 0
    for j in order:
        row, where = rows[j]
        msgs = prompt_messages(row, where)
        try:
            ids = prompt_ids(tokenizer, msgs)
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        if len(ids) > max_prompt_length:
            dropped += 1
            continue
        extra = {k: v for k, v in row.items() if k not in ("messages", "prompt", *REQUIRED)}
        prompts.append(Prompt(ids, msgs, row["dataset"], row["ground_truth"], where, extra))
    if not prompts:
        raise DataError(f"{what}: no prompts left ({dropped} longer than {max_prompt_length} tokens were dropped)")
    check_verifiers(prompts, what)
    stats = {"rows": len(rows), "kept": len(prompts), "dropped_long": dropped}
    log.info("%s: %d prompts (%d over %d tokens dropped)", what, len(prompts), dropped, max_prompt_length)
    return prompts, stats


def stream_prompts(n_prompts: int, start: int, count: int, seed: int) -> list[int]:
    """Indices ``start .. start + count - 1`` of an endless stream of prompt indices: a
    fresh permutation of the ``n_prompts`` prompts for every epoch, seeded by ``(seed,
    epoch)``. A pure function of its arguments, so a run that resumes at the same
    ``start`` (saved in its checkpoint) reads the same prompts an uninterrupted one would."""
    if n_prompts < 1:
        raise ValueError("no prompts to draw from")
    out: list[int] = []
    while len(out) < count:
        epoch, offset = divmod(start + len(out), n_prompts)
        perm = np.random.default_rng([seed, epoch]).permutation(n_prompts)
        take = min(count - len(out), n_prompts - offset)
        out.extend(perm[offset : offset + take].tolist())
    return out


def step_prompts(n_prompts: int, per_step: int, step: int, seed: int) -> list[int]:
    """Indices of the prompts of RL step ``step`` (0-based) when every step reads
    ``per_step`` prompts of the stream: consecutive slices of a per-epoch permutation
    seeded by ``(seed, epoch)``, wrapping into the next epoch."""
    return stream_prompts(n_prompts, step * per_step, per_step, seed)
