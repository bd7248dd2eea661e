"""IFEval verifiers: ``ifeval`` (IFEval's own format) and ``ifeval_old`` (Tülu 3's).

``verify_ifeval`` grades a response against IFEval ground truth
``{"instruction_id_list": [...], "kwargs": [...]}`` with the strict rules of
Google's reference checker; the score is the fraction of instructions followed.
``verify_ifeval_old`` grades the one-constraint ground truth of the HF dataset
``allenai/RLVR-IFeval`` (``{"func_name": ..., ...}``), see ``old_format``.
"""

from __future__ import annotations

from typing import Any

from .instructions import INSTRUCTIONS, build
from .old_format import verify_ifeval_old
from .params import json_object

__all__ = ["INSTRUCTIONS", "follow_instructions", "verify_ifeval", "verify_ifeval_old"]


def follow_instructions(
    response: str,
    instruction_id_list: list[str],
    kwargs_list: list[dict[str, Any] | None],
    prompt: str | None = None,
) -> list[bool]:
    """Per-instruction strict results, in order.

    All instructions are validated before any is checked, so bad ground truth raises
    ``ValueError`` whatever the response. A blank response follows nothing, as in the
    reference. ``prompt`` is accepted for symmetry with the reference's evaluation
    loop, which passes the prompt only to instructions that take a ``prompt`` kwarg;
    none of the 25 does (``combination:repeat_prompt`` carries ``prompt_to_repeat``).
    """
    del prompt
    if not isinstance(instruction_id_list, (list, tuple)) or not instruction_id_list:
        raise ValueError("ground truth needs a non-empty 'instruction_id_list'")
    if not isinstance(kwargs_list, (list, tuple)) or len(kwargs_list) != len(instruction_id_list):
        raise ValueError(
            f"ground truth needs one kwargs dict per instruction: {len(instruction_id_list)} ids, "
            f"{len(kwargs_list) if isinstance(kwargs_list, (list, tuple)) else 'no'} kwargs"
        )
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    checks = [build(instruction_id, kwargs) for instruction_id, kwargs in zip(instruction_id_list, kwargs_list)]
    if not response.strip():
        return [False] * len(checks)
    return [bool(check(response)) for check in checks]


def parse_ground_truth(ground_truth: Any) -> tuple[list[str], list[Any]]:
    """Instruction ids and kwargs from a dict or its JSON string.

    ``instruction_id`` is accepted as a synonym of ``instruction_id_list`` (open-instruct
    writes it so); a missing ``kwargs`` means no kwargs for every instruction.
    """
    ground_truth = json_object("ifeval", ground_truth)
    ids = ground_truth.get("instruction_id_list", ground_truth.get("instruction_id"))
    if isinstance(ids, str):
        ids = [ids]
    if not isinstance(ids, list) or not ids:
        raise ValueError("ifeval ground truth needs a non-empty 'instruction_id_list'")
    kwargs = ground_truth.get("kwargs")
    if kwargs is None:
        kwargs = [{}] * len(ids)
    if isinstance(kwargs, dict) and len(ids) == 1:
        kwargs = [kwargs]
    return ids, kwargs


def verify_ifeval(response: str, ground_truth: Any, prompt: str | None = None) -> tuple[float, str | None]:
    """Fraction of instructions followed (strict), and the failed ids when any failed."""
    ids, kwargs = parse_ground_truth(ground_truth)
    followed = follow_instructions(response, ids, kwargs, prompt)
    failed = [instruction_id for instruction_id, ok in zip(ids, followed) if not ok]
    reason = f"not followed: {', '.join(failed)}" if failed else None
    return sum(followed) / len(followed), reason
