"""A lean sampling loop over a causal LM's forward with its KV cache, for the ``hf``
engine.

Why by hand: for the small models RL runs on a CPU (and for short responses anywhere),
transformers' ``generate`` spends much of a step outside the model (logits processors,
stopping criteria, cache and output bookkeeping), and it prefills every row's prompt
even when the rows are the ``n`` samples of one prompt. This loop prefills each prompt
ONCE and copies its KV cache to the prompt's ``n`` rows, then runs only the model's
forward and the sampling step per token (measured in ``benchmarks/bench_grpo.py``).

It samples exactly as ``generate(do_sample=True)`` does: the warpers (temperature,
top-k, top-p; transformers' own classes) on the last position's logits, then
``softmax`` and ``torch.multinomial`` (``argmax`` when greedy), finished rows fed the pad
token, and the loop ends when every row has stopped or at ``max_new_tokens``. So the
global (or forked) RNG advances the same way, and with the same seed the samples equal
``generate``'s up to float rounding of the batched prefill. Left-padded prompts get
position ids counted from their first real token, as ``generate`` computes them.

The reported log-prob of each sampled token is ``log_softmax`` of the processed scores
(the distribution that sampled it; ``hf.py``'s module docstring).
"""

from __future__ import annotations

from typing import Sequence

import torch

from posttrain.rollout.base import SamplingConfig


def can_sample_with_cache(model) -> bool:
    """True for a decoder-only transformers model (also behind a peft wrapper), whose
    forward takes ``past_key_values`` and ``logits_to_keep``; other models use
    ``generate``."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    import inspect

    params = inspect.signature(base.forward).parameters
    return "past_key_values" in params and "logits_to_keep" in params


def warpers(sampling: SamplingConfig) -> list:
    """transformers' temperature / top-k / top-p warpers for ``sampling`` (none when
    greedy), in ``generate``'s order."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
    )

    if sampling.greedy:
        return []
    out = []
    if sampling.temperature != 1.0:
        out.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k > 0:
        out.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        out.append(TopPLogitsWarper(sampling.top_p))
    return out


def group_runs(prompt_index: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(unique, counts)``: the distinct prompts of consecutive equal indices, in order,
    and how many rows each has. ``[3, 3, 1, 1, 1]`` -> ``([3, 1], [2, 3])``."""
    unique: list[int] = []
    counts: list[int] = []
    for i in prompt_index:
        if unique and unique[-1] == i:
            counts[-1] += 1
        else:
            unique.append(i)
            counts.append(1)
    return unique, counts


@torch.inference_mode()
def sample_with_cache(model, prompts: Sequence[Sequence[int]], counts: Sequence[int], sampling: SamplingConfig,
                      pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``counts[k]`` rows from prompt ``k``: ``(tokens, logprobs)``, both
    ``(rows, new)`` on the CPU, rows in prompt order; a row that stopped is padded with
    ``pad_id`` (log-prob 0) after its stop token. The model must be in eval mode."""
    from transformers import DynamicCache

    from posttrain.logprobs import pad_sequences

    device = next(model.parameters()).device
    ids, mask = pad_sequences(prompts, pad_id, "left")
    ids, mask = ids.to(device), mask.to(device)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=getattr(model, "config", None))
    out = model(input_ids=ids, attention_mask=mask, position_ids=position, past_key_values=cache, use_cache=True,
                logits_to_keep=1)
    expand = torch.repeat_interleave(torch.arange(len(prompts), device=device),
                                     torch.as_tensor(list(counts), device=device))
    logits = out.logits[:, -1][expand]
    if len(expand) != len(prompts):
        cache.reorder_cache(expand)  # each prompt's keys and values copied to its rows
    rows, width, steps = len(expand), ids.shape[1], sampling.max_new_tokens
    # One mask for the whole response, sliced per step (no re-allocation per token).
    full_mask = torch.cat([mask[expand], mask.new_ones(rows, steps)], dim=1)
    next_position = position[expand, -1:] + 1
    processors = warpers(sampling)
    stop = torch.as_tensor(list(sampling.stop_token_ids), dtype=torch.long, device=device)
    unfinished = torch.ones(rows, dtype=torch.bool, device=device)
    tokens, logprobs = [], []
    for t in range(steps):
        scores = logits.float()
        for warp in processors:
            scores = warp(None, scores)
        logp = torch.log_softmax(scores, dim=-1)
        if sampling.greedy:
            new = scores.argmax(dim=-1)
        else:
            new = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        new = torch.where(unfinished, new, pad_id)
        tokens.append(new)
        logprobs.append(torch.where(unfinished, logp.gather(-1, new[:, None]).squeeze(1), 0.0))
        if stop.numel():
            unfinished &= ~torch.isin(new, stop)
        if t == steps - 1 or not bool(unfinished.any()):
            break
        out = model(input_ids=new[:, None], attention_mask=full_mask[:, : width + t + 1], position_ids=next_position,
                    past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1]
        next_position = next_position + 1
    return torch.stack(tokens, dim=1).cpu(), torch.stack(logprobs, dim=1).cpu()
