"""Chat formatting and assistant-only labels.

SFT trains on what the assistant wrote: each assistant turn's content and its end-of-turn
token (EOS in OLMo 2's template). Everything else (BOS, system and user turns, the
``<|assistant|>\\n`` role header) gets label ``-100`` so the loss ignores it.

The mask comes from the chat template's ``{% generation %}`` markers through
``apply_chat_template(..., return_assistant_tokens_mask=True)``. A template without
markers (a checkpoint that ships its own) falls back to open-instruct's prefix method:
render the conversation up to each assistant turn and label the tokens the turn adds.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from posttrain.errors import DataError

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
Overlong = Literal["truncate", "drop"]


def validate_messages(messages: Any, row: int | None = None, *, need_assistant: bool = True) -> list[dict]:
    """Check a conversation: a list of ``{"role", "content"}`` with known roles and non-empty
    string content, and (for training) at least one assistant turn. Returns it as plain
    dicts (extra keys dropped); raises ``DataError`` naming the row."""
    where = f"row {row}: " if row is not None else ""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError(f"{where}'messages' must be a non-empty list of {{role, content}}, got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}message {i} must have 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise DataError(f"{where}message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{where}message {i} ({role}) has empty content")
        out.append({"role": role, "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}conversation has no assistant turn to train on")
    return out


def _has_generation_markers(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "{% generation %}" in template.replace("{%-", "{%").replace("-%}", "%}")


def _render_ids(tokenizer, messages, add_generation_prompt=False) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return list(out["input_ids"])


def _labels_by_prefix(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    ids = _render_ids(tokenizer, messages)
    labels = [IGNORE_INDEX] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_render_ids(tokenizer, messages[:i], add_generation_prompt=True))
        end = len(_render_ids(tokenizer, messages[: i + 1]))
        # Between turns the template may add a newline after EOS; it is the template's, not
        # the assistant's, so the turn ends at its last EOS.
        eos = tokenizer.eos_token_id
        stop = end
        while stop > start and ids[stop - 1] != eos:
            stop -= 1
        stop = stop if stop > start else end
        labels[start:stop] = ids[start:stop]
    return ids, labels


def chat_ids_and_labels(tokenizer, conversations: Sequence[list[dict]]) -> list[tuple[list[int], list[int]]]:
    """Full-length ``(input_ids, labels)`` of validated conversations, in one batched call
    when the template has generation markers."""
    if not conversations:
        return []
    if not _has_generation_markers(tokenizer):
        return [_labels_by_prefix(tokenizer, list(c)) for c in conversations]
    out = tokenizer.apply_chat_template(
        [list(c) for c in conversations], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    result = []
    for ids, mask in zip(out["input_ids"], out["assistant_masks"]):
        ids = list(ids)
        result.append((ids, [t if k else IGNORE_INDEX for t, k in zip(ids, mask)]))
    return result


def fit_length(input_ids: list[int], labels: list[int], max_length: int, overlong: Overlong) -> tuple[dict | None, bool]:
    """Apply the over-long policy. Returns ``(example or None, truncated)``; an example cut
    so short that no label is left is dropped too (it would train on nothing)."""
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
    truncated = False
    if len(input_ids) > max_length:
        if overlong == "drop":
            return None, False
        input_ids, labels, truncated = input_ids[:max_length], labels[:max_length], True
    if all(x == IGNORE_INDEX for x in labels):
        return None, truncated
    return {"input_ids": input_ids, "labels": labels}, truncated


def tokenize_chat(tokenizer, messages, max_length: int, overlong: Overlong = "drop", *, row: int | None = None) -> dict | None:
    """One conversation as ``{"input_ids", "labels"}`` with loss only on assistant tokens
    (content + EOS of every assistant turn). Returns None when it is dropped (longer than
    ``max_length`` with ``overlong="drop"``, or truncated down to no assistant token).
    Invalid conversations raise ``DataError`` naming ``row``."""
    msgs = validate_messages(messages, row)
    (ids, labels), = chat_ids_and_labels(tokenizer, [msgs])
    example, _ = fit_length(ids, labels, max_length, overlong)
    return example


def prompt_ids(tokenizer, messages) -> list[int]:
    """Token ids of a prompt (conversation without the reply) ending in the generation
    prompt ``<|assistant|>\\n``: what a policy is asked to complete."""
    msgs = validate_messages(messages, need_assistant=False)
    return _render_ids(tokenizer, msgs, add_generation_prompt=True)
