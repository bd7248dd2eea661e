"""On-policy preference pairs from scored samples (``posttrain pairs``), as Tülu 3 built
its on-policy preference data: for each prompt, a sample that passes its verifiers is
*chosen* and one that fails is *rejected*.

Input rows are ``posttrain generate --score`` output (or any rows with the prompt as
``messages``/``prompt``, a ``response`` and a ``score``). Samples belong to the same prompt
when their prompt turns are equal. A sample *passes* when its score is at least
``threshold`` (default 1.0: the verifier fully satisfied) and *fails* otherwise. Prompts
whose samples all pass or all fail give no pair and are counted. Samples with a blank
response are left out (a blank assistant turn is not a trainable reply) and counted.

For each prompt, ``pairs_per_prompt`` distinct (chosen, rejected) combinations are drawn
with ``random.Random(seed)``, prompts taken in the order they first appear. Output rows are
in the Tülu format the DPO stage reads: ``chosen`` and ``rejected`` are the prompt turns
plus one assistant turn each, with ``chosen_score``/``rejected_score`` beside them.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any, Sequence

from posttrain.errors import DataError, PosttrainError


@dataclass
class PairsReport:
    """What became of the prompts."""

    samples: int = 0
    """Sample rows read."""
    prompts: int = 0
    """Distinct prompts among them."""
    pairs: int = 0
    """Pairs written."""
    prompts_with_pairs: int = 0
    """Prompts that gave at least one pair."""
    all_pass: int = 0
    """Prompts skipped because every sample passed."""
    all_fail: int = 0
    """Prompts skipped because every sample failed."""
    blank_responses: int = 0
    """Samples left out because their response is blank."""

    def summary(self) -> str:
        return (f"{self.pairs} pairs from {self.prompts_with_pairs} of {self.prompts} prompts "
                f"({self.samples} samples); skipped: {self.all_pass} prompts all passing, "
                f"{self.all_fail} all failing; {self.blank_responses} blank responses left out")

    def metrics(self, prefix: str = "pairs") -> dict[str, int]:
        return {f"{prefix}/{k}": v for k, v in self.__dict__.items()}


def _prompt_turns(row: dict, where: str) -> list[dict]:
    from posttrain.data.chat import validate_messages
    from posttrain.data.prompts import prompt_messages

    msgs = prompt_messages(row, where)
    try:
        return validate_messages(msgs, need_assistant=False)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None


def build_pairs(rows: Sequence[dict], *, threshold: float = 1.0, seed: int = 0, pairs_per_prompt: int = 1,
                source: str = "samples") -> tuple[list[dict], PairsReport]:
    """Preference pairs from scored sample rows (module docstring). Returns the pair rows
    and a :class:`PairsReport`. A row without a prompt, a string ``response`` or a numeric
    ``score`` is a ``DataError`` naming ``source`` and the row."""
    if pairs_per_prompt < 1:
        raise PosttrainError(f"pairs per prompt must be at least 1, got {pairs_per_prompt}")
    report = PairsReport(samples=len(rows))
    groups: dict[str, tuple[list[dict], list[tuple[dict, float]]]] = {}
    for i, row in enumerate(rows):
        where = f"{source}: row {i}"
        turns = _prompt_turns(row, where)
        response, score = row.get("response"), row.get("score")
        if not isinstance(response, str):
            raise DataError(f"{where}: needs a string `response`")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
            raise DataError(f"{where}: needs a numeric `score` (score the samples first: generate --score, or verify)")
        key = json.dumps(turns, sort_keys=True, ensure_ascii=False)
        group = groups.setdefault(key, (turns, []))
        if not response.strip():
            report.blank_responses += 1
            continue
        group[1].append((row, float(score)))
    report.prompts = len(groups)

    rng = random.Random(seed)
    pairs: list[dict] = []
    for turns, samples in groups.values():
        passing = [s for s in samples if s[1] >= threshold]
        failing = [s for s in samples if s[1] < threshold]
        if not failing:
            report.all_pass += 1  # a prompt with no usable sample counts here too
            continue
        if not passing:
            report.all_fail += 1
            continue
        combos = len(passing) * len(failing)
        for c in rng.sample(range(combos), min(pairs_per_prompt, combos)):
            (good, good_score), (bad, bad_score) = passing[c // len(failing)], failing[c % len(failing)]
            pairs.append(_pair_row(turns, good, good_score, bad, bad_score))
        report.prompts_with_pairs += 1
    report.pairs = len(pairs)
    return pairs, report


def _pair_row(turns: list[dict], good: dict, good_score: float, bad: dict, bad_score: float) -> dict[str, Any]:
    # No `prompt` column: the DPO loader would then read the row as prompt + replies.
    row: dict[str, Any] = {
        "chosen": turns + [{"role": "assistant", "content": good["response"]}],
        "rejected": turns + [{"role": "assistant", "content": bad["response"]}],
        "chosen_score": good_score,
        "rejected_score": bad_score,
    }
    for side, sample in (("chosen", good), ("rejected", bad)):
        if isinstance(sample.get("sample_index"), int):
            row[f"{side}_sample_index"] = sample["sample_index"]
    return row


# -- the command ----------------------------------------------------------------------


def _cmd_pairs(args) -> int:
    from pathlib import Path

    from posttrain.jsonl import read_jsonl, write_jsonl_atomic

    out = Path(args.output)
    if not out.resolve().parent.is_dir():
        raise PosttrainError(f"-o {args.output}: directory {out.resolve().parent} does not exist")
    rows = read_jsonl(args.scored)
    if not rows:
        raise DataError(f"{args.scored}: no rows")
    pairs, report = build_pairs(rows, threshold=args.threshold, seed=args.seed,
                                pairs_per_prompt=args.pairs_per_prompt, source=args.scored)
    write_jsonl_atomic(out, pairs)
    print(f"{report.summary()} -> {args.output}")
    if args.json:
        print(json.dumps(report.__dict__))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("pairs", help="preference pairs (passing vs failing sample per prompt) from scored samples",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("scored", help="scored samples: JSONL rows with messages|prompt, response, score")
    p.add_argument("-o", "--output", required=True, help="pairs in the Tülu chosen/rejected format (atomic write)")
    p.add_argument("--threshold", type=float, default=1.0,
                   help="a sample passes when its score is at least this, and fails below it (default: %(default)s)")
    p.add_argument("--pairs-per-prompt", type=int, default=1,
                   help="distinct chosen/rejected combinations drawn per prompt, at most (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice of samples (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the counts as one JSON line last")
    p.set_defaults(func=_cmd_pairs)
