"""Preference pairs: normalise rows to (prompt, chosen, rejected), tokenize them, report
the bad ones, and collate pairs into one padded batch of 2B rows.

Two row formats are accepted:

- Tülu / open-instruct: ``chosen`` and ``rejected`` are whole conversations that share
  every turn but the last assistant one (``[{user}, {assistant}]``).
- Prompt + responses: ``prompt`` (a string or a message list) plus ``chosen`` and
  ``rejected``, each an assistant reply (a string, one message, or a list of assistant
  messages).

A row whose prompts differ, or with a missing/empty side, is never trained on: it is
dropped and counted (with the first few row indices) in the stage log and metrics.

Token layout of a pair: ``prompt`` ends with the generation prompt
(``<|assistant|>\\n``); each response is the assistant turn's content plus EOS. Over-long
pairs follow ``truncation``:

- ``prompt_left`` (TRL's rule): drop the prompt's oldest tokens until the pair fits,
  keeping at least ``min(len(prompt), max_length // 2)`` prompt tokens; a response that
  still does not fit is cut from the right (it loses its EOS).
- ``drop``: over-long pairs are dropped and counted.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from posttrain.data.cache import cached, sources_fingerprint, tokenizer_fingerprint
from posttrain.data.chat import IGNORE_INDEX, chat_ids_and_labels, validate_messages
from posttrain.data.mixer import load_rows, sample_indices
from posttrain.errors import DataError
from posttrain.recipe.schema import DataSource

log = logging.getLogger(__name__)

Truncation = Literal["prompt_left", "drop"]
SHOW_BAD = 5
BATCH = 256
"""Rows per batched chat-template call."""


@dataclass
class PreferencePair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    def __len__(self) -> int:
        return len(self.prompt) + max(len(self.chosen), len(self.rejected))


@dataclass
class PairReport:
    """What happened to the rows: kept, dropped by reason (with the first indices), cut."""

    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: dict[str, list[int]] = field(default_factory=dict)

    def drop(self, reason: str, index: int) -> None:
        self.dropped.setdefault(reason, []).append(index)

    @property
    def n_dropped(self) -> int:
        return sum(len(v) for v in self.dropped.values())

    def summary(self) -> str:
        parts = [f"{self.kept}/{self.rows} pairs kept", f"{self.truncated} truncated"]
        for reason, idx in self.dropped.items():
            parts.append(f"{len(idx)} dropped ({reason}; rows {', '.join(map(str, idx[:SHOW_BAD]))}"
                         + (", ..." if len(idx) > SHOW_BAD else "") + ")")
        return ", ".join(parts)

    def metrics(self, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {f"{prefix}/rows": self.rows, f"{prefix}/kept": self.kept,
                               f"{prefix}/truncated": self.truncated, f"{prefix}/dropped": self.n_dropped}
        for reason, idx in self.dropped.items():
            key = reason.replace(" ", "_")
            out[f"{prefix}/dropped/{key}"] = len(idx)
            out[f"{prefix}/dropped/{key}/first_rows"] = ",".join(map(str, idx[:SHOW_BAD]))
        return out


class BadRow(ValueError):
    """A row that cannot be a preference pair; the message is the reason, one short phrase."""


def _as_messages(value: Any, side: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "assistant" if side != "prompt" else "user", "content": value}]
    if isinstance(value, dict):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise BadRow(f"{side} is missing")


def split_row(row: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """``(prompt messages, chosen reply messages, rejected reply messages)`` of a row in
    either accepted format; raises :class:`BadRow` with the reason."""
    if not isinstance(row, dict):
        raise BadRow("not an object")
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not chosen or not rejected:
        raise BadRow("empty chosen or rejected")
    if row.get("prompt") is not None:
        prompt = _as_messages(row["prompt"], "prompt")
        c, r = _as_messages(chosen, "chosen"), _as_messages(rejected, "rejected")
        # Some datasets repeat the prompt inside chosen/rejected; strip it when they do.
        if c[: len(prompt)] == prompt and r[: len(prompt)] == prompt:
            c, r = c[len(prompt):], r[len(prompt):]
    else:
        c, r = _as_messages(chosen, "chosen"), _as_messages(rejected, "rejected")
        if not c or not r or c[:-1] != r[:-1]:
            raise BadRow("prompts differ")
        prompt, c, r = c[:-1], c[-1:], r[-1:]
    if not c or not r or any(not isinstance(m, dict) or m.get("role") != "assistant" for m in c + r):
        raise BadRow("reply is not an assistant turn")
    try:
        prompt = validate_messages(prompt, need_assistant=False)
        c, r = validate_messages(c), validate_messages(r)
    except DataError:
        raise BadRow("empty or malformed message") from None
    if prompt and prompt[-1]["role"] == "assistant":
        raise BadRow("prompt ends with an assistant turn")
    return prompt, c, r


def _reply_span(labels: list[int]) -> tuple[int, int]:
    """Start and end of the last run of labelled tokens: the final reply and its EOS."""
    end = len(labels)
    while end > 0 and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start, end


def fit_pair(pair: PreferencePair, max_length: int, truncation: Truncation) -> tuple[PreferencePair | None, bool]:
    """Apply the over-long rule (module docstring). Returns ``(pair or None, truncated)``."""
    if len(pair) <= max_length:
        return pair, False
    if truncation == "drop":
        return None, False
    longest = max(len(pair.chosen), len(pair.rejected))
    keep = max(max_length - longest, min(len(pair.prompt), max_length // 2))
    prompt = pair.prompt[len(pair.prompt) - keep:]
    room = max_length - len(prompt)
    return PreferencePair(prompt, pair.chosen[:room], pair.rejected[:room]), True


def tokenize_pairs(tokenizer, rows: Sequence[dict], max_length: int, truncation: Truncation = "prompt_left",
                   *, first_index: int = 0) -> tuple[list[PreferencePair], PairReport]:
    """Tokenize rows into pairs (bad rows dropped and reported; see module docstring)."""
    if truncation not in ("prompt_left", "drop"):
        raise ValueError(f"truncation must be 'prompt_left' or 'drop', got {truncation!r}")
    report = PairReport(rows=len(rows))
    convs, where = [], []
    for i, row in enumerate(rows):
        try:
            prompt, c, r = split_row(row)
        except BadRow as e:
            report.drop(str(e), first_index + i)
            continue
        convs += [prompt + c, prompt + r]
        where.append(first_index + i)
    tokenized = chat_ids_and_labels(tokenizer, convs) if convs else []
    pairs = []
    for k, index in enumerate(where):
        (c_ids, c_lab), (r_ids, r_lab) = tokenized[2 * k], tokenized[2 * k + 1]
        cs, ce = _reply_span(c_lab)
        rs, re_ = _reply_span(r_lab)
        if cs == ce or rs == re_ or c_ids[:cs] != r_ids[:rs]:
            report.drop("prompts differ" if c_ids[:cs] != r_ids[:rs] else "empty reply", index)
            continue
        pair, cut = fit_pair(PreferencePair(c_ids[:cs], c_ids[cs:ce], r_ids[rs:re_]), max_length, truncation)
        if pair is None or not pair.chosen or not pair.rejected:
            report.drop("longer than max_length", index)
            continue
        report.truncated += cut
        pairs.append(pair)
    report.kept = len(pairs)
    return pairs, report


def log_report(report: PairReport, what: str) -> None:
    (log.warning if report.n_dropped else log.info)("%s: %s", what, report.summary())


# ---------------------------------------------------------------------------- batching
def collate_pairs(pairs: Sequence[PreferencePair], pad_id: int) -> dict[str, torch.Tensor]:
    """One right-padded batch of ``2B`` rows: chosen sequences first, then rejected, so a
    single forward scores both sides. ``loss_mask[i, t]`` marks that target ``t + 1``
    (column ``t`` of shifted log-probs) is a response token."""
    seqs = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    starts = [len(p.prompt) for p in pairs] * 2
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    loss_mask = torch.zeros((len(seqs), width - 1), dtype=torch.bool)
    for i, (s, start) in enumerate(zip(seqs, starts)):
        ids[i, : len(s)] = torch.as_tensor(s)
        attn[i, : len(s)] = 1
        loss_mask[i, start - 1 : len(s) - 1] = True
    n = len(pairs)
    tokens = loss_mask.sum(-1)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask,
            "chosen_tokens": tokens[:n], "rejected_tokens": tokens[n:]}


# ---------------------------------------------------------------------------- sources
def _rows(ds, start: int, stop: int) -> list[dict]:
    cols = ds[start:stop]
    return [dict(zip(cols, vals)) for vals in zip(*cols.values())]


def tokenize_source(source: DataSource, tokenizer, max_length: int, truncation: Truncation
                    ) -> tuple[list[PreferencePair], PairReport]:
    """All pairs of one data source; report indices are rows of its file."""
    ds = load_rows(source, required=("chosen", "rejected"))
    pairs, report = [], PairReport()
    for start in range(0, len(ds), BATCH):
        part, rep = tokenize_pairs(tokenizer, _rows(ds, start, start + BATCH), max_length, truncation,
                                   first_index=start)
        pairs += part
        report.rows += rep.rows
        report.truncated += rep.truncated
        for reason, idx in rep.dropped.items():
            report.dropped.setdefault(reason, []).extend(idx)
    report.kept = len(pairs)
    return pairs, report


def build_preference_pairs(sources: Sequence[DataSource], tokenizer, max_length: int,
                           truncation: Truncation = "prompt_left", seed: int = 0, cache_dir=None,
                           desc: str = "dpo") -> tuple[list[PreferencePair], dict]:
    """The tokenized preference mixture and its stats (per-source reports under
    ``sources``). Each source is tokenized on its own so dropped rows are named by their
    row in that file; its ``amount`` then selects among the kept pairs with open-instruct's
    rule (``posttrain.data.mixer.sample_indices``) and the mixture is shuffled with
    ``seed``. Cached on disk like SFT data (``posttrain.data.cache``)."""
    parts = {"kind": "dpo", "sources": sources_fingerprint(sources), "seed": seed,
             "tokenizer": tokenizer_fingerprint(tokenizer), "max_length": max_length, "truncation": truncation}

    def build():
        mixed: list[PreferencePair] = []
        reports = []
        for src in sources:
            pairs, report = tokenize_source(src, tokenizer, max_length, truncation)
            log_report(report, f"{desc} data {src.path}")
            reports.append({"path": src.path, **asdict(report)})
            mixed += [pairs[i] for i in sample_indices(len(pairs), src.amount, seed)]
        order = np.random.default_rng(seed).permutation(len(mixed)).tolist()
        return [asdict(mixed[i]) for i in order], {"sources": reports}

    examples, stats = cached(parts, build, cache_dir, desc)
    pairs = [PreferencePair(**e) for e in examples]
    if stats.get("cache_hit"):
        for rep in stats["sources"]:
            log_report(PairReport(**{k: v for k, v in rep.items() if k != "path"}), f"{desc} data {rep['path']}")
    if not pairs:
        raise DataError(f"{desc}: no usable preference pairs in {', '.join(s.path for s in sources)}")
    return pairs, stats


def report_metrics(stats: dict, prefix: str) -> dict[str, Any]:
    """Flat metrics of a :func:`build_preference_pairs` stats dict (summed over sources,
    first dropped rows as ``path:row``)."""
    total = PairReport()
    for rep in stats["sources"]:
        total.rows += rep["rows"]
        total.kept += rep["kept"]
        total.truncated += rep["truncated"]
        for reason, idx in rep["dropped"].items():
            total.dropped.setdefault(reason, []).extend(f"{Path(rep['path']).name}:{i}" for i in idx)
    return total.metrics(prefix)
