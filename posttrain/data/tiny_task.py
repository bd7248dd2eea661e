"""The seeded tiny task: 1-2 digit addition and subtraction (both operand orders, results
from -99 to 198), asked in many phrasings, answered with short column-by-column working
that ends in ``#### N``.

Why worked answers: a few-million-parameter model trained for minutes on answer-only
arithmetic barely beats chance on held-out sums; spelling out the ones and tens columns
turns each step into a one-digit lookup it can learn. The format is regular on purpose:

    7 + 35: ones 7 + 5 = 12, carry 1. tens 0 + 3 + 1 = 4.
    #### 42
    35 - 7: ones 5 - 7, borrow 1, 15 - 7 = 8. tens 3 - 0 - 1 = 2.
    #### 28
    7 - 35: 7 < 35, so 7 - 35 = -(35 - 7). ones 5 - 7, borrow 1, 15 - 7 = 8. tens 3 - 0 - 1 = 2.
    #### -28

A negative result is worked the way people do it: compare, subtract the smaller from the
larger, and negate, each stated explicitly, so the only new steps over a non-negative
difference are one comparison (right after the restated question) and one minus sign
(after ``####``, copied from the ``-(`` stated earlier). The final answer is the last
number, so the ``gsm8k`` verifier scores it (``#### -28`` parses as -28).

Two things are held out of every training file (SFT, preference pairs, RLVR prompts, and
the base model's pretraining text, which ``scripts/pretrain_tiny_base.py`` builds from
``training_problems``):

- number triples: the split key is ``(min(x, y), max(x, y), op)``, so ``7 + 35``,
  ``35 + 7``, ``7 - 35`` and ``35 - 7`` are held out together (a held-out subtraction's
  column working is never trained on in either order);
- phrasings: questions are built from a lead-in (``What is {e}?``, ``Work out {e}.``) and
  an expression (``{x} + {y}``, ``{x} plus {y}``, ``the sum of {x} and {y}``), or are a
  whole sentence (``Subtract {y} from {x}.``). Some lead-ins and sentences are used only
  in ``eval.jsonl`` (``Evaluate {e}.``, ``What's {e}?``, a bare ``{x} - {y}``, ``If you
  subtract {y} from {x}, what do you get?``); every word they need to be understood (the
  operation, and ``from`` reversing the order) also occurs in training phrasings.

Every eval question is a held-out triple; its ``phrasing`` column says whether the
phrasing was trained (``trained``) or held out (``held_out``).
``python -m posttrain.data.tiny_task OUT_DIR --seed 0`` writes the files byte-identically
on every run.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

# Expressions: the operation between two numbers, in the order they are operated on.
ADD_SYMBOLIC = ["{x} + {y}", "{x}+{y}"]
SUB_SYMBOLIC = ["{x} - {y}", "{x}-{y}"]
ADD_VERBAL = ["{x} plus {y}", "the sum of {x} and {y}", "the total of {x} and {y}", "{x} increased by {y}"]
SUB_VERBAL = ["{x} minus {y}", "{x} take away {y}", "{x} less {y}", "{x} decreased by {y}"]

# Lead-ins around an expression; the symbolic ones fit symbolic expressions only. Many
# shapes on purpose (a question, an order, a label before the expression, the expression
# first): a small model that saw only a few learns those strings, not the task, and
# restates an unseen phrasing's numbers wrongly.
TRAIN_LEADS = ["What is {e}?", "Calculate {e}.", "Compute {e}.", "Find {e}.", "Work out {e}.", "Tell me {e}.",
               "How much is {e}?", "Solve: {e}", "{e} equals what?", "Please work out {e}.",
               "What does {e} come to?", "Determine {e}.", "Figure out {e}.", "Please calculate {e}.",
               "Could you work out {e}?", "I need {e}.", "Show me {e}.", "Question: {e}", "Quick one: {e}",
               "Find the value of {e}.", "{e} is how much?", "Do you know {e}?", "Help me with {e}."]
TRAIN_SYMBOLIC_LEADS = ["{e} = ?", "{e}=?", "Calculate {e} =", "Result of {e}?", "Math: {e}", "{e} makes what?"]
HELD_OUT_LEADS = ["What's {e}?", "Evaluate {e}.", "Can you compute {e}?", "Give me {e}."]
HELD_OUT_SYMBOLIC_LEADS = ["{e}"]

# Whole sentences. Most name the subtrahend first ("Subtract 7 from 35" is 35 - 7), so the
# model must restate the numbers in the other order; "Start with" ones keep the order. As
# with the lead-ins, several sentence shapes (a condition first, a story, two sentences).
TRAIN_ADD_SENTENCES = ["Add {x} and {y}.", "Please add {x} and {y}.", "What do you get if you add {x} and {y}?",
                       "Add {y} to {x}.", "Start with {x} and add {y}.",
                       "Suppose you add {x} and {y}. What is the result?", "When {y} is added to {x}, what is the total?",
                       "I have {x} and get {y} more. How many do I have now?", "Put {x} and {y} together.",
                       "Adding {y} to {x} gives what?", "Begin at {x}, then add {y}."]
TRAIN_SUB_SENTENCES = ["Subtract {y} from {x}.", "Please subtract {y} from {x}.",
                       "What do you get if you subtract {y} from {x}?", "Take {y} away from {x}.",
                       "Start with {x} and take away {y}.",
                       "Suppose you subtract {y} from {x}. What is the result?",
                       "When {y} is subtracted from {x}, what is left?",
                       "I have {x} and lose {y}. How many do I have now?", "Remove {y} from {x}.",
                       "Subtracting {y} from {x} gives what?", "Begin at {x}, then subtract {y}."]
HELD_OUT_ADD_SENTENCES = ["If you add {x} and {y}, what do you get?", "Add together {x} and {y}."]
HELD_OUT_SUB_SENTENCES = ["If you subtract {y} from {x}, what do you get?", "Take away {y} from {x}."]


def _families(symbolic: list[str], verbal: list[str], leads: list[str], symbolic_leads: list[str],
              sentences: list[str]) -> dict[str, list[str]]:
    return {"symbolic": [lead.replace("{e}", e) for lead in leads + symbolic_leads for e in symbolic],
            "verbal": [lead.replace("{e}", e) for lead in leads for e in verbal],
            "sentence": sentences}


PHRASINGS = {
    ("+", "trained"): _families(ADD_SYMBOLIC, ADD_VERBAL, TRAIN_LEADS, TRAIN_SYMBOLIC_LEADS, TRAIN_ADD_SENTENCES),
    ("-", "trained"): _families(SUB_SYMBOLIC, SUB_VERBAL, TRAIN_LEADS, TRAIN_SYMBOLIC_LEADS, TRAIN_SUB_SENTENCES),
    ("+", "held_out"): _families(ADD_SYMBOLIC, ADD_VERBAL, HELD_OUT_LEADS, HELD_OUT_SYMBOLIC_LEADS,
                                 HELD_OUT_ADD_SENTENCES),
    ("-", "held_out"): _families(SUB_SYMBOLIC, SUB_VERBAL, HELD_OUT_LEADS, HELD_OUT_SYMBOLIC_LEADS,
                                 HELD_OUT_SUB_SENTENCES),
}
"""Question templates by (operation, ``trained`` | ``held_out``) and family (``symbolic``,
``verbal``, ``sentence``); ``{x} op {y}`` is the question's value whatever order the words
name the numbers in. A question picks a family uniformly, then a template in it, so the
few sentences are asked as often as the many lead-in x expression combinations (with a
uniform pick over templates, "Subtract 7 from 35" would be 1 question in 25 and a small
model never learns to restate it)."""

SIZES = {"sft_train": 12000, "sft_eval": 200, "eval": 600, "dpo_train": 3000, "dpo_eval": 200, "rlvr_train": 2000}
"""Rows per output file (train files draw from the training triples, the rest from held-out ones)."""
EVAL_HELD_OUT_EVERY = 3
"""Every third ``eval.jsonl`` row is asked in a held-out phrasing, the rest in trained ones."""
HELD_OUT_FRACTION = 0.1
"""Share of (min, max, op) triples kept out of every training file."""


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
        """The split key: both operand orders share it (``7 - 35`` is worked as
        ``-(35 - 7)``, so holding one order out but not the other would leak it)."""
        return (min(self.x, self.y), max(self.x, self.y), self.op)


def all_keys() -> list[tuple[int, int, str]]:
    return [(a, b, op) for op in "+-" for a in range(100) for b in range(a, 100)]


def split_keys(seed: int) -> tuple[list, list]:
    """(train keys, held-out keys), a seeded partition of every triple."""
    keys = all_keys()
    random.Random(f"split-{seed}").shuffle(keys)
    n = int(len(keys) * HELD_OUT_FRACTION)
    return sorted(keys[n:]), sorted(keys[:n])


def problem_from_key(key, rng: random.Random) -> Problem:
    """The key's problem in a random operand order (for subtraction: half of them negative)."""
    a, b, op = key
    if rng.random() < 0.5:
        a, b = b, a
    return Problem(a, b, op)


# --------------------------------------------------------------------------- working
def work_add(x: int, y: int, *, drop_carry: bool = False, ones_slip: int = 0) -> tuple[str, int]:
    """Worked addition and its result. ``drop_carry`` forgets the carry into the tens;
    ``ones_slip`` gets the ones sum wrong by that much (both make consistent wrong work)."""
    xo, xt, yo, yt = x % 10, x // 10, y % 10, y // 10
    s = xo + yo + ones_slip
    carry = 0 if drop_carry else s // 10
    ones = f"ones {xo} + {yo} = {s}" + (", carry 1" if carry else "")
    tens_sum = xt + yt + carry
    tens = f"tens {xt} + {yt} + 1 = {tens_sum}" if carry else f"tens {xt} + {yt} = {tens_sum}"
    result = tens_sum * 10 + s % 10
    return f"{x} + {y}: {ones}. {tens}.\n#### {result}", result


def _sub_columns(x: int, y: int, drop_borrow: bool, ones_slip: int) -> tuple[str, int]:
    """Column working of ``x - y`` for ``x >= y``."""
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
    return f"{ones}. {tens}.", tens_d * 10 + d


def work_sub(x: int, y: int, *, drop_borrow: bool = False, ones_slip: int = 0,
             drop_sign: bool = False) -> tuple[str, int]:
    """Worked subtraction and its result. For ``x < y``: compare, work ``y - x`` in columns,
    negate. ``drop_borrow`` borrows for the ones but forgets to take it from the tens;
    ``ones_slip`` gets the ones difference wrong; ``drop_sign`` forgets the final minus."""
    if x >= y:
        columns, result = _sub_columns(x, y, drop_borrow, ones_slip)
        return f"{x} - {y}: {columns}\n#### {result}", result
    columns, magnitude = _sub_columns(y, x, drop_borrow, ones_slip)
    result = magnitude if drop_sign else -magnitude
    return f"{x} - {y}: {x} < {y}, so {x} - {y} = -({y} - {x}). {columns}\n#### {result}", result


def solve(p: Problem) -> str:
    """The correct worked answer."""
    text, result = (work_add if p.op == "+" else work_sub)(p.x, p.y)
    assert result == p.answer, (p, result)
    return text


def miscopies(n: int) -> list[int]:
    """Ways to restate an operand wrongly: a digit doubled or repeated (6 -> 66, 35 -> 33 or
    55) or the tens off by one. Copying an operand wrongly is a common mistake of the
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
        text, result = work(x, y)
        if result != p.answer:
            out.append(("miscopied_operand", text))
    return out


def wrong_answers(p: Problem) -> list[tuple[str, str]]:
    """Plausible wrong worked answers ``(kind, text)``: a dropped carry or borrow, an
    off-by-one slip in the ones column, the other operation, and for subtraction the
    operands swapped (``35 - 7`` for ``7 - 35``) or a negative result's minus dropped."""
    out = []
    ones_digits = (p.x % 10, p.y % 10) if p.op == "+" or p.x >= p.y else (p.y % 10, p.x % 10)
    if p.op == "+":
        if sum(ones_digits) >= 10:
            out.append(("dropped_carry", work_add(p.x, p.y, drop_carry=True)))
        for slip in (1, -1):
            if 0 <= sum(ones_digits) + slip <= 18:
                out.append((f"off_by_{slip:+d}", work_add(p.x, p.y, ones_slip=slip)))
        out.append(("other_op", work_sub(p.x, p.y)))
    else:
        if ones_digits[0] < ones_digits[1]:
            out.append(("dropped_borrow", work_sub(p.x, p.y, drop_borrow=True)))
        for slip in (1, -1):
            if 0 <= (ones_digits[0] - ones_digits[1]) % 10 + slip <= 9:
                out.append((f"off_by_{slip:+d}", work_sub(p.x, p.y, ones_slip=slip)))
        out.append(("other_op", work_add(p.x, p.y)))
        out.append(("swapped_operands", work_sub(p.y, p.x)))
        if p.x < p.y:
            out.append(("dropped_sign", work_sub(p.x, p.y, drop_sign=True)))
    return [(kind, text) for kind, (text, result) in out if result != p.answer]


def ask(p: Problem, rng: random.Random, phrasing: str = "trained") -> str:
    """The question in a random phrasing from the ``trained`` or ``held_out`` set."""
    families = PHRASINGS[(p.op, phrasing)]
    q = rng.choice(families[rng.choice(sorted(families))]).format(x=p.x, y=p.y)
    return q[0].upper() + q[1:]


def training_problems(seed: int, n: int, rng: random.Random) -> list[Problem]:
    """``n`` problems over the training triples (each once in a seeded order, repeated
    when ``n`` is larger), each in a random operand order."""
    train, _held = split_keys(seed)
    return [problem_from_key(k, rng) for k in _draw(train, n, rng)]


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


def eval_row(p: Problem, rng: random.Random, phrasing: str = "trained") -> dict:
    q = ask(p, rng, phrasing)
    return {"messages": [{"role": "user", "content": q}], "prompt": q, "dataset": "gsm8k",
            "ground_truth": str(p.answer), "phrasing": phrasing}


def dpo_row(p: Problem, rng: random.Random) -> dict:
    q = ask(p, rng)
    # Half the pairs reject a miscopied operand, half another consistent mistake.
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
    makers = {"sft": sft_row, "dpo": dpo_row, "rlvr": rlvr_row}
    out = {}
    for name, (keys, kind) in plan.items():
        rng = random.Random(f"{name}-{seed}")
        problems = [problem_from_key(k, rng) for k in _draw(keys, sizes[name], rng)]
        if kind == "eval":
            # Interleaved, so that any prefix (``eval.limit``, ``--limit``) has the same share.
            out[name] = [eval_row(p, rng, "held_out" if (i + 1) % EVAL_HELD_OUT_EVERY == 0 else "trained")
                         for i, p in enumerate(problems)]
        else:
            out[name] = [makers[kind](p, rng) for p in problems]
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
