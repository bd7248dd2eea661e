"""The standard verifiable evaluations: each suite's hub data set, its prompt, its
generation length and its metric.

Prompts are zero-shot chat turns, the way instruct models are evaluated today (OLMo 3's
OLMES suites, lm-eval's chat variants); the wording is ours, the shape is the peers':

- ``gsm8k``: GSM8K test (``openai/gsm8k``, config ``main``, 1319 questions). The question,
  then a request to reason step by step and end with the final number; scored by the
  ``gsm8k`` verifier, the last number in the response (lm-eval's "flexible-extract", the
  fallback of OLMES's exact match) against the number after ``####``. 512 new tokens, as
  OLMES's ``gsm8k::tulu``.
- ``math500``: MATH-500 (``HuggingFaceH4/MATH-500``, the 500-problem subset of MATH's test
  split from "Let's Verify Step by Step"). The problem, then a request for the final answer
  in ``\\boxed{}``; scored by the ``math`` verifier (``math-verify`` equivalence of the
  last boxed answer with ``answer``), as lm-eval's ``math_verify`` metric and HF's
  MATH-500 evaluations do. 1024 new tokens, as OLMES's ``minerva_math_500::tulu``.
- ``ifeval``: IFEval (``google/IFEval``, 541 prompts). The prompt as is; Google's four
  accuracies (``ifeval_metrics``), prompt-level strict as the headline ``accuracy``. 1280 new
  tokens, as lm-eval's ``ifeval``.

The few-shot variants (OLMES's 8-shot GSM8K and 4-shot Minerva MATH used for Tülu 3) need
the peers' exemplar texts and are not offered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from posttrain.errors import DataError

GSM8K_PROMPT = ("{question}\n\nSolve this step by step. Finish your response with the line "
                "\"The answer is N.\", where N is the final number.")
MATH_PROMPT = "{problem}\n\nSolve this step by step, and put your final answer in \\boxed{{}}."


@dataclass(frozen=True)
class Suite:
    name: str
    hub_path: str
    hub_config: str | None
    hub_split: str
    columns: tuple[str, ...]
    """Columns every source row must have."""
    max_new_tokens: int
    to_row: Callable[[dict], dict]
    """A source row -> an eval row: ``messages`` (the prompt turn), ``dataset`` (verifier),
    ``ground_truth``, plus the columns worth keeping in the output."""

    @property
    def hub_label(self) -> str:
        cfg = f", config {self.hub_config}" if self.hub_config else ""
        return f"{self.hub_path} ({self.hub_split} split{cfg})"


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _gsm8k_row(raw: dict) -> dict:
    answer = str(raw["answer"])
    gold = answer.rsplit("####", 1)[1].strip() if "####" in answer else answer.strip()
    return {"messages": _user(GSM8K_PROMPT.format(question=raw["question"])), "dataset": "gsm8k",
            "ground_truth": gold.replace(",", "")}


def _math500_row(raw: dict) -> dict:
    row = {"messages": _user(MATH_PROMPT.format(problem=raw["problem"])), "dataset": "math",
           "ground_truth": str(raw["answer"])}
    for key in ("unique_id", "subject", "level"):
        if key in raw:
            row[key] = raw[key]
    return row


def _ifeval_row(raw: dict) -> dict:
    kwargs = raw["kwargs"]
    row = {"messages": _user(raw["prompt"]), "dataset": "ifeval",
           "ground_truth": {"instruction_id_list": list(raw["instruction_id_list"]), "kwargs": list(kwargs)}}
    if "key" in raw:
        row["key"] = raw["key"]
    return row


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("gsm8k", "openai/gsm8k", "main", "test", ("question", "answer"), 512, _gsm8k_row),
        Suite("math500", "HuggingFaceH4/MATH-500", None, "test", ("problem", "answer"), 1024, _math500_row),
        Suite("ifeval", "google/IFEval", None, "train", ("prompt", "instruction_id_list", "kwargs"), 1280,
              _ifeval_row),
    )
}


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name.strip().lower()]
    except KeyError:
        raise DataError(f"unknown eval suite {name.strip()!r}; known: {', '.join(SUITES)}") from None


def parse_suites(spec: str) -> list[Suite]:
    """``"gsm8k,math500,ifeval"`` -> suites, in order, each once."""
    names = [n for n in spec.split(",") if n.strip()]
    if not names:
        raise DataError("--suite needs at least one name")
    suites: list[Suite] = []
    for n in names:
        s = get_suite(n)
        if s not in suites:
            suites.append(s)
    return suites


def check_source_row(suite: Suite, raw: Any, where: str) -> None:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object")
    missing = [c for c in suite.columns if c not in raw or raw[c] is None]
    if missing:
        raise DataError(f"{where}: missing `{missing[0]}` ({suite.name} rows need {', '.join(suite.columns)})")
