"""Per-token log-probs (and entropies) of chosen tokens at chosen positions: the one place
where hidden states meet the vocabulary, shared by the SFT loss, DPO's pair scoring and
reference pass, RL's policy log-probs and the rollout engines' checks.

For causal LMs whose logits are exactly ``lm_head(final hidden state)``, only the
requested positions go through the LM head, so no ``(B, T, vocab)`` logits tensor is
ever built (OLMo 2's vocabulary is 100k wide; a 16k-token RL batch would need 6.5 GB of
fp32 logits). Other architectures (soft-capped or scaled logits) and wrapped models
whose own ``forward`` must run (DDP prepares its gradient sync there) take the plain
path: the model's full logits, then the same selection.

Under DDP, FSDP2 or DeepSpeed the wrapped module's own ``forward`` must run: DDP prepares
its gradient sync there, FSDP2 gathers the root's sharded parameters in its forward hook.
Calling the decoder and the head of such a model directly would skip that, so the step
engine prepares :class:`LogprobsModule` (a thin module around the model) instead of the
bare model, and :func:`logprobs_at` given that wrapper (or DDP/DeepSpeed around it) calls
the wrapper's ``forward`` with the request, which runs the fast path inside it. A wrapped
model without it gets the full logits, with a warning (never silently).
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Sequence

import torch

log = logging.getLogger(__name__)

# Causal LMs whose logits are exactly ``lm_head(final hidden state)`` (no soft-capping,
# no logit scaling), so projecting a subset of positions gives the same numbers.
PLAIN_HEAD_MODELS = frozenset({"olmo", "olmo2", "olmo3", "llama", "mistral", "qwen2", "qwen3"})

Positions = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class TokenLogprobs(NamedTuple):
    """Log-probs of the target tokens, shape ``(N,)``, and, when asked for, the entropy of
    each position's (tempered) next-token distribution, shape ``(N,)``."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None


def decoder_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """``(decoder, lm_head)`` of a plain-head causal LM (also through a peft wrapper), or
    None: for other architectures, and for a model wrapped for distributed training (DDP,
    DeepSpeed, an FSDP2 root), whose own ``forward`` must run."""
    if _distributed_wrapper(model):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(getattr(base, "config", None), "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None:
        return None
    return decoder, head


class LogprobsModule(torch.nn.Module):
    """What the step engine prepares (wraps in DDP, shards with FSDP2, hands to DeepSpeed)
    instead of the bare model when it trains on several processes. Called with
    ``logprobs_request`` (a dict of :func:`logprobs_at`'s arguments) its ``forward`` runs
    the position-selected log-probs on the model inside it, so the wrapper's forward
    logic runs first; called any other way it is the model's own forward."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        # FSDP2 auto-wrapping looks for the decoder-layer classes here.
        self._no_split_modules = getattr(model, "_no_split_modules", None)
        self.config = getattr(model, "config", None)

    def forward(self, *args, logprobs_request: dict | None = None, **kwargs):
        if logprobs_request is None:
            return self.model(*args, **kwargs)
        return logprobs_at(self.model, **logprobs_request)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # accelerate's FSDP2 preparation shards the embeddings and the head as units of their own.
    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.model.get_output_embeddings()


def unwrap_logprobs_module(model):
    """The model inside a :class:`LogprobsModule` (through DDP/DeepSpeed), else ``model``."""
    found = _logprobs_module(model)
    return found.model if found is not None else model


def _logprobs_module(model) -> LogprobsModule | None:
    if isinstance(model, LogprobsModule):  # also once FSDP2 has sharded it (a subclass then)
        return model
    inner = getattr(model, "module", None)  # DDP, DeepSpeed's engine
    return inner if isinstance(inner, LogprobsModule) else None


def _distributed_wrapper(model) -> bool:
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return True
    if isinstance(getattr(model, "module", None), torch.nn.Module) and not hasattr(model, "config"):
        return True  # DeepSpeed's engine and similar wrappers
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return False
    return isinstance(model, FSDPModule)


_warned: set[str] = set()


def logprobs_at(
    model,
    input_ids: torch.Tensor,
    positions: Positions,
    targets: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    temperature: float = 1.0,
    entropy: bool = False,
    generic: bool = False,
    chunk_size: int | None = None,
) -> TokenLogprobs:
    """``log_softmax(logits / temperature)[target]`` at each requested position of one
    forward over ``input_ids`` ``(B, T)``; differentiable when grad is enabled.

    ``positions`` names, for each target, the position whose output predicts it: either
    flat indices into ``B * T`` (shape ``(N,)``) or a ``(rows, cols)`` pair; a position
    may appear several times. For next-token prediction the target of position ``t`` is
    ``input_ids[:, t + 1]``. ``attention_mask`` and ``position_ids`` go to the model
    unchanged (2-D padding masks, 4-D block masks, restarting positions of packed rows).
    ``entropy`` adds the entropy of each tempered distribution. ``generic`` forces the
    full-logits path any causal LM takes. ``chunk_size`` bounds the logits alive at once
    to ``chunk_size x vocab``: the head and softmax run per chunk and, with grad, are
    recomputed in the backward pass instead of stored."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not generic and _logprobs_module(model) is not None:
        # Through the wrapper's forward (DDP's and FSDP's hooks), which calls back here on
        # the bare model.
        return TokenLogprobs(*model(logprobs_request=dict(
            input_ids=input_ids, positions=positions, targets=targets, attention_mask=attention_mask,
            position_ids=position_ids, temperature=temperature, entropy=entropy, chunk_size=chunk_size)))
    rows, cols = _rows_cols(positions, input_ids.shape[1])
    parts = None if generic else decoder_and_head(model)
    if parts is None and not generic and _distributed_wrapper(model) and type(model).__name__ not in _warned:
        _warned.add(type(model).__name__)
        log.warning("log-probs of a %s-wrapped model without LogprobsModule: computing the full logits "
                    "(prepare LogprobsModule(model) instead for the LM head at the requested positions only)",
                    type(model).__name__)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    if parts is not None:
        decoder, head = parts
        hidden = decoder(**inputs).last_hidden_state[rows, cols]
    else:
        # The model's own forward: its logits are not a plain head of the hidden states
        # (or a wrapper must run). The full (B, T, vocab) tensor is unavoidable here.
        logits = model(**inputs).logits
        hidden, head = logits[rows, cols], None
    return _chunked(hidden, head, targets, temperature, entropy, chunk_size)


def _rows_cols(positions: Positions, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(positions, (tuple, list)):
        rows, cols = positions
        return rows, cols
    return positions // width, positions % width


def _chunked(hidden, head, targets, temperature, entropy, chunk_size) -> TokenLogprobs:
    n = targets.shape[0]
    if not chunk_size or n <= chunk_size:
        return TokenLogprobs(*_head_logprobs(hidden, targets, head, temperature, entropy))
    pieces = []
    for start in range(0, n, chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            # Keep only the chunk's hidden states for backward, not its logits.
            pieces.append(torch.utils.checkpoint.checkpoint(
                _head_logprobs, h, t, head, temperature, entropy, use_reentrant=False))
        else:
            pieces.append(_head_logprobs(h, t, head, temperature, entropy))
    lps = torch.cat([p[0] for p in pieces])
    ents = torch.cat([p[1] for p in pieces]) if entropy else None
    return TokenLogprobs(lps, ents)


def _head_logprobs(hidden, targets, head, temperature: float, entropy: bool):
    """``hidden`` holds hidden states (``head`` given) or already the logits (``head``
    None), one row per target."""
    logits = (head(hidden) if head is not None else hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    ent = None
    if entropy:
        probs = torch.softmax(logits, dim=-1)
        ent = lse - (probs * logits).sum(-1)
    return lp, ent


# ---------------------------------------------------------------------------- batches
def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id lists into ``(input_ids, attention_mask)`` tensors on the given side."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        else:
            ids[i, width - len(s) :] = torch.as_tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token, so left padding does
    not shift positions."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def response_batch(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """One padded batch of ``prompt + response`` rows, ready for :func:`logprobs_at`:
    ``input_ids``, ``attention_mask`` (B, T), ``position_ids`` (starting at 0 on each
    row's first real token, so either padding side gives the same numbers), and the
    flat ``positions`` / ``targets`` of every response token, all samples' tokens in
    order, plus ``lengths`` (B,) to split them back per sample."""
    seqs = [list(p) + list(r) for p, r in zip(prompts, responses)]
    ids, mask = pad_sequences(seqs, pad_id, padding_side)
    width = ids.shape[1]
    flat, targets = [], []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        offset = 0 if padding_side == "right" else width - len(p) - len(r)
        first = i * width + offset + len(p) - 1  # the position that predicts r[0]
        flat.extend(range(first, first + len(r)))
        targets.extend(r)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions_from_mask(mask),
            "positions": torch.tensor(flat, dtype=torch.long), "targets": torch.tensor(targets, dtype=torch.long),
            "lengths": torch.tensor([len(r) for r in responses], dtype=torch.long)}


@torch.no_grad()
def response_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    *,
    temperature: float = 1.0,
    batch_size: int = 16,
    padding_side: str = "right",
    device: torch.device | str | None = None,
) -> list[torch.Tensor]:
    """No-grad log-probs of each response given its prompt, one 1-D CPU tensor per
    response (its length), under ``log_softmax(logits / temperature)``. Batched; the
    model is put in eval mode for the call and restored after."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        for start in range(0, len(prompts), batch_size):
            b = response_batch(prompts[start : start + batch_size], responses[start : start + batch_size],
                               pad_id, padding_side)
            lp = logprobs_at(model, b["input_ids"].to(device), b["positions"].to(device), b["targets"].to(device),
                             attention_mask=b["attention_mask"].to(device), position_ids=b["position_ids"].to(device),
                             temperature=temperature).logprobs.float().cpu()
            out.extend(lp.split(b["lengths"].tolist()))
    finally:
        model.train(was_training)
    return out
