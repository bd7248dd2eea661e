"""The seeded tiny task: 1-2 digit addition and subtraction chats, asked in many phrasings,
answered with short column-by-column working that ends in ``#### N``.

Why worked answers: a few-million-parameter model trained for minutes on answer-only
arithmetic barely beats chance on held-out sums; spelling out the ones and tens columns
turns each step into a one-digit lookup it can learn. The format is regular on purpose:

    7 + 35: ones 7 + 5 = 12, write 2 carry 1. tens 0 + 3 + 1 = 4. So 7 + 35 = 42.
    #### 42

The final answer is the last number, so the ``gsm8k`` verifier scores it. Subtraction is
asked only with a non-negative result (``Subtract 7 from 35``, never ``7 - 35``).

Held-out questions never appear in training: the split is by the (a, b, op) triple, with
``a + b`` and ``b + a`` counted as one triple, so no phrasing or order of a held-out sum is
trained on. ``python -m posttrain.data.tiny_task OUT_DIR --seed 0`` writes the files
byte-identically on every run.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

ADD_PHRASES = [
    "What is {x} + {y}?", "Calculate {x} + {y} =", "{x}+{y}=?", "{x} + {y} = ?", "What do you get if you add {x} and {y}?",
    "Add {x} and {y}.", "Compute {x} plus {y}.", "What is the sum of {x} and {y}?", "Find {x} + {y}.",
    "How much is {x} plus {y}?", "What is {x} plus {y}?", "Work out {x} + {y}.", "Please add {x} and {y}.",
    "Solve: {x} + {y}", "{x} plus {y} equals what?", "Tell me {x} + {y}.",
]
SUB_PHRASES = [
    "What is {x} - {y}?", "Calculate {x} - {y} =", "{x}-{y}=?", "{x} - {y} = ?", "Compute {x} minus {y}.",
    "Subtract {y} from {x}.", "What do you get if you subtract {y} from {x}?", "What is {x} take away {y}?",
    "What is the difference between {x} and {y}?", "How much is {x} minus {y}?", "Take {y} away from {x}.",
    "Find {x} - {y}.", "What is {x} minus {y}?", "Work out {x} - {y}.", "Solve: {x} - {y}", "Tell me {x} - {y}.",
]

SIZES = {"sft_train": 12000, "sft_eval": 200, "eval": 500, "dpo_train": 3000, "dpo_eval": 200, "rlvr_train": 2000}
"""Rows per output file (train files draw from the training triples, the rest from held-out ones)."""
HELD_OUT_FRACTION = 0.1
"""Share of (a, b, op) triples kept out of every training file."""


@dataclass(frozen=True)
class Problem:
    x: int
    y: int
    op: str  # "+" or "-"

    @property
    def answer(self) -> int:
        return self.x + self.y if self.op == "+" else self.x - self.y

    @property
    def key(self) -> tuple[int, int, str]:
        """The split key: addition is unordered, so ``7 + 35`` and ``35 + 7`` share it."""
        return (min(self.x, self.y), max(self.x, self.y), "+") if self.op == "+" else (self.x, self.y, "-")


def all_keys() -> list[tuple[int, int, str]]:
    keys = [(a, b, "+") for a in range(100) for b in range(a, 100)]
    keys += [(a, b, "-") for a in range(100) for b in range(a + 1)]
    return keys


def split_keys(seed: int) -> tuple[list, list]:
    """(train keys, held-out keys), a seeded partition of every triple."""
    keys = all_keys()
    random.Random(f"split-{seed}").shuffle(keys)
    n = int(len(keys) * HELD_OUT_FRACTION)
    return sorted(keys[n:]), sorted(keys[:n])


def problem_from_key(key, rng: random.Random) -> Problem:
    a, b, op = key
    if op == "+" and rng.random() < 0.5:
        a, b = b, a
    return Problem(a, b, op)


# --------------------------------------------------------------------------- working
def work_add(x: int, y: int, *, drop_carry: bool = False, ones_slip: int = 0) -> tuple[str, int]:
    """Worked addition and its result. ``drop_carry`` forgets the carry into the tens;
    ``ones_slip`` gets the ones sum wrong by that much (both make consistent wrong work)."""
    xo, xt, yo, yt = x % 10, x // 10, y % 10, y // 10
    s = xo + yo + ones_slip
    carry = s // 10 if not drop_carry else 0
    ones = f"ones {xo} + {yo} = {s}" + (f", write {s % 10} carry 1" if s >= 10 else "")
    if s >= 10 and drop_carry:
        ones = f"ones {xo} + {yo} = {s}, write {s % 10}"
    tens_sum = xt + yt + carry
    tens = f"tens {xt} + {yt} + 1 = {tens_sum}" if carry else f"tens {xt} + {yt} = {tens_sum}"
    result = tens_sum * 10 + s % 10
    return f"{x} + {y}: {ones}. {tens}. So {x} + {y} = {result}.\n#### {result}", result


def work_sub(x: int, y: int, *, drop_borrow: bool = False, ones_slip: int = 0) -> tuple[str, int]:
    """Worked subtraction (``x >= y``) and its result. ``drop_borrow`` borrows for the ones
    but forgets to take it from the tens; ``ones_slip`` gets the ones difference wrong."""
    xo, xt, yo, yt = x % 10, x // 10, y % 10, y // 10
    if xo < yo:
        d = 10 + xo - yo + ones_slip
        ones = f"ones {xo} - {yo}, borrow 1, 1{xo} - {yo} = {d}"
        borrow = 0 if drop_borrow else 1
    else:
        d = xo - yo + ones_slip
        ones = f"ones {xo} - {yo} = {d}"
        borrow = 0
    tens_d = xt - yt - borrow
    tens = f"tens {xt} - {yt} - 1 = {tens_d}" if borrow else f"tens {xt} - {yt} = {tens_d}"
    result = tens_d * 10 + d
    return f"{x} - {y}: {ones}. {tens}. So {x} - {y} = {result}.\n#### {result}", result


def solve(p: Problem) -> str:
    """The correct worked answer."""
    text, result = (work_add if p.op == "+" else work_sub)(p.x, p.y)
    assert result == p.answer, (p, result)
    return text


def miscopies(n: int) -> list[int]:
    """Ways to restate an operand wrongly: a digit doubled or repeated (6 -> 66, 35 -> 33 or
    55) or the tens off by one. Copying an operand wrongly is the commonest mistake of the
    SFT'd tiny model, so preference pairs that reject it teach what it gets wrong."""
    out = {11 * n} if n < 10 else {(n // 10) * 11, (n % 10) * 11}
    out |= {n + 10, n - 10}
    return sorted(v for v in out if 0 <= v <= 99 and v != n)


def miscopied_answers(p: Problem) -> list[tuple[str, str]]:
    """Consistent worked answers to the question with one operand copied wrongly."""
    work = work_add if p.op == "+" else work_sub
    wrong = [(v, p.y) for v in miscopies(p.x)] + [(p.x, v) for v in miscopies(p.y)]
    out = []
    for x, y in wrong:
        if p.op == "-" and x < y:
            continue
        text, result = work(x, y)
        if result != p.answer:
            out.append(("miscopied_operand", text))
    return out


def wrong_answers(p: Problem) -> list[tuple[str, str]]:
    """Plausible wrong worked answers ``(kind, text)``, each internally consistent: a
    dropped carry or borrow, an off-by-one slip in the ones column, the other operation."""
    out = []
    if p.op == "+":
        if p.x % 10 + p.y % 10 >= 10:
            out.append(("dropped_carry", work_add(p.x, p.y, drop_carry=True)))
        for slip in (1, -1):
            if 0 <= p.x % 10 + p.y % 10 + slip <= 18:
                out.append((f"off_by_{slip:+d}", work_add(p.x, p.y, ones_slip=slip)))
        if p.x >= p.y:
            out.append(("other_op", work_sub(p.x, p.y)))
    else:
        if p.x % 10 < p.y % 10:
            out.append(("dropped_borrow", work_sub(p.x, p.y, drop_borrow=True)))
        for slip in (1, -1):
            d = (p.x % 10 - p.y % 10) % 10 + slip
            if 0 <= d <= 9:
                out.append((f"off_by_{slip:+d}", work_sub(p.x, p.y, ones_slip=slip)))
        out.append(("other_op", work_add(p.x, p.y)))
    return [(kind, text) for kind, (text, result) in out if result != p.answer and result >= 0]


def ask(p: Problem, rng: random.Random) -> str:
    return rng.choice(ADD_PHRASES if p.op == "+" else SUB_PHRASES).format(x=p.x, y=p.y)


# --------------------------------------------------------------------------- rows
def _draw(keys: list, n: int, rng: random.Random) -> list:
    """``n`` keys: each key once in a seeded order, repeated when ``n`` is larger."""
    out: list = []
    while len(out) < n:
        block = list(keys)
        rng.shuffle(block)
        out.extend(block[: n - len(out)])
    return out


def sft_row(p: Problem, rng: random.Random) -> dict:
    return {"messages": [{"role": "user", "content": ask(p, rng)}, {"role": "assistant", "content": solve(p)}]}


def eval_row(p: Problem, rng: random.Random) -> dict:
    q = ask(p, rng)
    return {"messages": [{"role": "user", "content": q}], "prompt": q, "dataset": "gsm8k",
            "ground_truth": str(p.answer)}


def dpo_row(p: Problem, rng: random.Random) -> dict:
    q = ask(p, rng)
    # Half the pairs reject a miscopied operand, half an arithmetic slip.
    copied = miscopied_answers(p)
    kind, bad = rng.choice(copied if copied and rng.random() < 0.5 else wrong_answers(p))
    user = {"role": "user", "content": q}
    return {"chosen": [user, {"role": "assistant", "content": solve(p)}],
            "rejected": [user, {"role": "assistant", "content": bad}], "rejected_kind": kind}


def rlvr_row(p: Problem, rng: random.Random) -> dict:
    return {"messages": [{"role": "user", "content": ask(p, rng)}], "ground_truth": str(p.answer), "dataset": "gsm8k"}


def generate(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """Every split's rows, from the seed alone."""
    sizes = {**SIZES, **(sizes or {})}
    train, held = split_keys(seed)
    # Held-out triples go to disjoint slices for accuracy and eval loss where they fit.
    held_order = _draw(held, len(held), random.Random(f"held-{seed}"))
    n_eval, n_loss = sizes["eval"], sizes["sft_eval"]
    fits = n_eval + n_loss <= len(held)
    plan = {"sft_train": (train, "sft"), "dpo_train": (train, "dpo"), "rlvr_train": (train, "rlvr"),
            "eval": (held_order[:n_eval] if fits else held, "eval"),
            "sft_eval": (held_order[n_eval : n_eval + n_loss] if fits else held, "sft"), "dpo_eval": (held, "dpo")}
    makers = {"sft": sft_row, "eval": eval_row, "dpo": dpo_row, "rlvr": rlvr_row}
    out = {}
    for name, (keys, kind) in plan.items():
        rng = random.Random(f"{name}-{seed}")
        out[name] = [makers[kind](problem_from_key(k, rng), rng) for k in _draw(keys, sizes[name], rng)]
    return out


def write(out_dir: str | Path, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, Path]:
    """Write one ``<split>.jsonl`` per split to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in generate(seed, sizes).items():
        path = out / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n")
        paths[name] = path
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m posttrain.data.tiny_task", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", help="folder for the JSONL files")
    ap.add_argument("--seed", type=int, default=0, help="one seed decides the split, phrasings and draws")
    args = ap.parse_args(argv)
    for path in write(args.out_dir, args.seed).values():
        print(path)


if __name__ == "__main__":
    main()
