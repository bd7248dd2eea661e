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
from functools import partial
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
def shared_length(pair: PreferencePair) -> int:
    """Response tokens the two sides share at their start (each keeps at least one own)."""
    c, r = pair.chosen, pair.rejected
    n, top = 0, min(len(c), len(r)) - 1
    while n < top and c[n] == r[n]:
        n += 1
    return n


def pair_row_length(pair: PreferencePair) -> int:
    """Tokens of the pair's row in :func:`collate_pairs`' layout."""
    return len(pair.prompt) + len(pair.chosen) + len(pair.rejected) - shared_length(pair)


def collate_pairs(pairs: Sequence[PreferencePair], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch holding both sides of every pair, each pair in ONE row: the prompt and
    the responses' common start once, then the chosen rest, then the rejected rest
    (prefix sharing). Each rest has position ids continuing from the shared part and
    attends to the shared part and to itself only, never to the other side, so every
    token sees exactly the context it has in its own sequence.

    Keys: ``input_ids``, ``position_ids`` (B, L); ``attention_mask`` (B, 1, L, L) bool,
    True = may attend (pads attend to themselves only); ``score_row``, ``score_pos``,
    ``score_target``, ``score_out``: for each response token, the row and position whose
    logits predict it, the token, and its output slot (pair ``i``'s chosen ``i``, its
    rejected ``B + i``; shared tokens appear once for each side); ``chosen_tokens``,
    ``rejected_tokens`` (B,)."""
    n_pairs = len(pairs)
    layout = []
    for p in pairs:
        k = shared_length(p)
        layout.append((p.prompt + p.chosen[:k], len(p.prompt), p.chosen[k:], p.rejected[k:]))
    width = max(len(h) + len(c) + len(r) for h, _, c, r in layout)
    ids = torch.full((n_pairs, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n_pairs, width), dtype=torch.long)
    allow = torch.zeros((n_pairs, width, width), dtype=torch.bool)
    tril = torch.ones((width, width), dtype=torch.bool).tril()
    rows, cols, targets, outs = [], [], [], []
    for i, (head, plen, c, r) in enumerate(layout):
        h, nc, nr = len(head), len(c), len(r)
        n = h + nc + nr
        ids[i, :n] = torch.as_tensor(head + c + r)
        pos[i, :h] = torch.arange(h)
        pos[i, h : h + nc] = torch.arange(h, h + nc)
        pos[i, h + nc : n] = torch.arange(h, h + nr)
        pos[i, n:] = torch.arange(width - n)
        allow[i, :h, :h] = tril[:h, :h]
        allow[i, h:n, :h] = True
        allow[i, h : h + nc, h : h + nc] = tril[:nc, :nc]
        allow[i, h + nc : n, h + nc : n] = tril[:nr, :nr]
        allow[i, n:, n:] = torch.eye(width - n, dtype=torch.bool)
        shared_pos = list(range(plen - 1, h - 1))
        # chosen[k] comes from the last shared position, chosen[k + j] from column h + j - 1
        for out, rest, start in ((i, c, h), (n_pairs + i, r, h + nc)):
            p_ = shared_pos + [h - 1] + list(range(start, start + len(rest) - 1))
            rows += [i] * len(p_)
            cols += p_
            targets += head[plen:] + rest
            outs += [out] * len(p_)
    as_t = partial(torch.tensor, dtype=torch.long)
    outs_t = as_t(outs)
    counts = torch.bincount(outs_t, minlength=2 * n_pairs)
    return {"input_ids": ids, "position_ids": pos, "attention_mask": allow.unsqueeze(1),
            "score_row": as_t(rows), "score_pos": as_t(cols), "score_target": as_t(targets), "score_out": outs_t,
            "chosen_tokens": counts[:n_pairs], "rejected_tokens": counts[n_pairs:],
            "n_tokens": sum(len(h) + len(c) + len(r) for h, _, c, r in layout)}


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
