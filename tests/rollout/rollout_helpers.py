"""Helpers of the rollout tests: prompts, a real optimizer step, a greedy decoder that
uses nothing but the model's forward, and the part of transformers that vLLM's
Transformers backend patches."""

from __future__ import annotations

import torch

from posttrain.policy import Policy

# Token-id prompts of different lengths (the tiny vocabulary has 512 ids; 0 is BOS/EOS).
PROMPTS = [[0, 17, 42, 99, 310, 7, 256], [0, 5], [0, 400, 401, 402, 11, 12, 13, 14, 15, 16, 17]]


def optimizer_step(policy: Policy, lr: float) -> None:
    """One real AdamW step on the negative log-likelihood of a fixed token sequence."""
    from posttrain.logprobs import logprobs_at

    model = policy.model
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    ids = torch.tensor([[0, 3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9]])
    positions = torch.arange(ids.shape[1] - 1)
    loss = -logprobs_at(model, ids, positions, ids[0, 1:]).logprobs.mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    model.eval()


@torch.no_grad()
def greedy_reference(model, prompts, max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations from full forwards (no KV cache, no batching, no engine)."""
    out = []
    for p in prompts:
        ids = list(p)
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
        out.append(ids[len(p):])
    return out


def olmo2_surface() -> dict:
    """What vLLM's Transformers backend changes when it loads OLMo 2 in a process: the
    bases and the methods (functions, descriptors) of every class in transformers'
    OLMo 2 modeling module, and the attention functions registered with transformers."""
    import transformers.models.olmo2.modeling_olmo2 as m
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    surface = {"attention": sorted(ALL_ATTENTION_FUNCTIONS.keys())}
    for name, cls in vars(m).items():
        if isinstance(cls, type) and cls.__module__ == m.__name__:
            methods = {k: v for k, v in vars(cls).items()
                       if callable(v) or isinstance(v, (staticmethod, classmethod, property))}
            surface[name] = (cls.__bases__, methods)
    return surface
