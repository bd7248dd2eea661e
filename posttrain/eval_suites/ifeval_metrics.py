"""IFEval's four accuracies, as Google's reference checker defines them.

Strict: an instruction is followed if its check passes on the response (a blank response
follows nothing). Loose: it is followed if the check passes on any of eight variants of the
response: as is, without its first line, without its last line, without both, and each of
those four with every ``*`` removed (markdown emphasis). Prompt-level accuracy is the
fraction of prompts with every instruction followed; instruction-level accuracy is the
fraction of all instructions (over all prompts) followed.

The instruction checks themselves are the ``ifeval`` verifier's
(``posttrain.verifiers.ifeval``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from posttrain.verifiers.ifeval import follow_instructions, parse_ground_truth


def loose_variants(response: str) -> list[str]:
    """The eight responses the loose score tries."""
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    plain = [response] + cut
    return plain + [r.replace("*", "") for r in plain]


@dataclass(frozen=True)
class Followed:
    """One prompt's per-instruction results."""

    strict: list[bool]
    loose: list[bool]


def follow(response: str, ground_truth: Any, prompt: str | None = None) -> Followed:
    """Strict and loose results for one response; ``ground_truth`` as the ``ifeval``
    verifier takes it (``{"instruction_id_list": [...], "kwargs": [...]}`` or its JSON)."""
    ids, kwargs = parse_ground_truth(ground_truth)
    strict = follow_instructions(response, ids, kwargs, prompt)
    loose = list(strict)
    for variant in loose_variants(response)[1:]:
        if all(loose):
            break
        for i, ok in enumerate(follow_instructions(variant, ids, kwargs, prompt)):
            loose[i] = loose[i] or ok
    return Followed(strict, loose)


def accuracies(results: Sequence[Followed]) -> dict[str, float | int]:
    """``prompt_level_strict``, ``inst_level_strict``, ``prompt_level_loose``,
    ``inst_level_loose`` over all prompts, and the prompt and instruction counts."""
    n_inst = sum(len(r.strict) for r in results)
    n = len(results)

    def mean(xs) -> float:
        xs = list(xs)
        return round(sum(xs) / len(xs), 6) if xs else 0.0

    return {
        "n": n,
        "n_instructions": n_inst,
        "prompt_level_strict": mean(all(r.strict) for r in results),
        "inst_level_strict": mean(ok for r in results for ok in r.strict),
        "prompt_level_loose": mean(all(r.loose) for r in results),
        "inst_level_loose": mean(ok for r in results for ok in r.loose),
    }
