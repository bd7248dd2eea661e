"""Samples -> one micro-batch for the RL losses.

**Layout.** Rows hold ``prompt + response`` tokens, right-padded; ``positions`` /
``targets`` name the response tokens only, in sample order, so the LM head runs on them
alone (``posttrain.logprobs.logprobs_at``). Two layouts give the same log-probs and
gradients:

- one row per sample (``attention_mask`` (R, W), the usual causal attention);
- *prompt sharing*: the samples of one prompt that are next to each other in the
  micro-batch (GRPO's group) share ONE row: the prompt once, then each response, every
  response attending to the prompt and to its own earlier tokens only (a 4-D mask (R, 1,
  W, W), True = may attend) with position ids continuing from the prompt, so each token
  sees exactly the context it has alone. The prompt's forward and backward run once per
  group instead of once per sample. The first token of every response is predicted by
  the prompt's last position, which the responses share. Dense masks make attention
  cost grow with the square of the row, so ``share="auto"`` picks the layout with fewer
  estimated FLOPs (sharing wins for short responses; long ones, e.g. 2,048 tokens x 16
  samples, take one row each).

**Per-token tensors** are ``(B, T)`` over response tokens (B samples, T the longest
response), zero-padded:

- ``response_mask``: the response's real tokens (where ``logprobs_at``'s flat output
  goes, row by row);
- ``loss_mask``: the tokens that enter the loss: ``response_mask`` of the samples that
  are trained on, minus the tokens or responses a rollout correction masked;
- ``advantages``, ``engine_logprobs``, and when the samples carry them
  ``old_logprobs``, ``ref_logprobs``, ``correction_weights`` and an algorithm's extra
  fields.

With ``old_logprobs`` present and a rollout correction asked for, the correction
(``posttrain.rl.correction``) is applied here, on the CPU, so the loss mask, and with it
the item count the trainer divides by, is known before the forward pass. Without old
log-probs (one update per step) the loss applies ``tis`` itself, from the forward's own
detached log-probs; masking modes always come with old log-probs (``runner.py``).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch

from posttrain.stages.rlvr.rollouts import Sample

Share = Literal["auto", "on", "off"]


def pad_tokens(values: Sequence[torch.Tensor], width: int, dtype=torch.float32) -> torch.Tensor:
    """``(L_i,)`` tensors -> ``(B, width)``, zero-padded on the right."""
    out = torch.zeros((len(values), width), dtype=dtype)
    for i, v in enumerate(values):
        out[i, : v.numel()] = v.to(dtype)
    return out


def prompt_runs(prompts: Sequence[Sequence[int]]) -> list[range]:
    """Consecutive samples with the same prompt, as ranges of sample indices."""
    runs, start = [], 0
    for i in range(1, len(prompts) + 1):
        if i == len(prompts) or list(prompts[i]) != list(prompts[start]):
            runs.append(range(start, i))
            start = i
    return runs


def layout_flops(prompts, responses, runs, shared: bool, dims: tuple[int, int]) -> float:
    """Estimated forward FLOPs per layer of a layout (padding included, as computed):
    the linear layers per token plus attention per (query, key) pair."""
    hidden, ffn = dims
    per_token = 2 * (4 * hidden * hidden + 3 * hidden * ffn)
    per_pair = 4 * hidden
    if shared:
        lengths = [len(prompts[r[0]]) + sum(len(responses[i]) for i in r) for r in runs]
    else:
        lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    width = max(lengths)
    return len(lengths) * (width * per_token + width * width * per_pair)


def sequence_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int, *,
                   share: Share = "auto", dims: tuple[int, int] | None = None) -> dict:
    """The forward inputs for the log-probs of each response given its prompt (module
    docstring): ``input_ids``, ``position_ids``, ``attention_mask`` (2-D, or 4-D when
    prompts are shared), flat ``positions`` and ``targets`` of every response token in
    sample order, ``lengths`` (B,) of the responses, ``n_tokens`` (real tokens computed)
    and ``shared`` (which layout). ``dims`` = (hidden, intermediate size) of the model,
    for ``share="auto"``."""
    runs = prompt_runs(prompts)
    shared = share == "on" or (share == "auto" and dims is not None and any(len(r) > 1 for r in runs)
                               and layout_flops(prompts, responses, runs, True, dims)
                               < layout_flops(prompts, responses, runs, False, dims))
    groups = runs if shared else [range(i, i + 1) for i in range(len(prompts))]
    widths = [len(prompts[g[0]]) + sum(len(responses[i]) for i in g) for g in groups]
    width = max(widths)
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(groups), width), dtype=torch.long)
    allow = torch.zeros((len(groups), width, width), dtype=torch.bool) if shared else None
    mask2d = torch.zeros((len(groups), width), dtype=torch.long)
    tril = torch.ones((width, width), dtype=torch.bool).tril() if shared else None
    flat: list[int] = []
    targets: list[int] = []
    for row, g in enumerate(groups):
        prompt = list(prompts[g[0]])
        p = len(prompt)
        ids[row, :p] = torch.as_tensor(prompt, dtype=torch.long)
        pos[row, :p] = torch.arange(p)
        if allow is not None:
            allow[row, :p, :p] = tril[:p, :p]
        at = p
        for i in g:
            r = list(responses[i])
            n = len(r)
            ids[row, at : at + n] = torch.as_tensor(r, dtype=torch.long)
            pos[row, at : at + n] = torch.arange(p, p + n)
            if allow is not None:
                allow[row, at : at + n, :p] = True
                allow[row, at : at + n, at : at + n] = tril[:n, :n]
            # r[0] is predicted by the prompt's last position, r[k] by the column of r[k - 1]
            cols = [p - 1] + list(range(at, at + n - 1))
            flat.extend(row * width + c for c in cols[:n])
            targets.extend(r)
            at += n
        mask2d[row, :at] = 1
        if allow is not None and at < width:
            allow[row, at:, at:] = torch.eye(width - at, dtype=torch.bool)  # pads see themselves only
            pos[row, at:] = torch.arange(width - at)
    return {"input_ids": ids, "position_ids": pos,
            "attention_mask": allow.unsqueeze(1) if allow is not None else mask2d,
            "positions": torch.tensor(flat, dtype=torch.long), "targets": torch.tensor(targets, dtype=torch.long),
            "lengths": torch.tensor([len(r) for r in responses], dtype=torch.long),
            "n_tokens": int(sum(widths)), "shared": shared}


def collate_samples(samples: Sequence[Sample], pad_id: int, *, correction: str = "none", tis_cap: float = 2.0,
                    share: Share = "auto", dims: tuple[int, int] | None = None) -> dict:
    """One micro-batch (module docstring). ``n_tokens`` counts the real tokens the
    forward computes (for throughput); ``n_response_tokens`` the response tokens."""
    if not samples:
        raise ValueError("a micro-batch needs at least one sample")
    b = sequence_batch([s.prompt_ids for s in samples], [s.response_ids for s in samples], pad_id, share=share,
                       dims=dims)
    lengths = b.pop("lengths")
    width = max(int(lengths.max()), 1)
    response_mask = torch.arange(width)[None, :] < lengths[:, None]
    trained = torch.tensor([s.trained for s in samples], dtype=torch.bool)
    batch = {
        **b,
        "response_mask": response_mask,
        "loss_mask": response_mask & trained[:, None],
        "advantages": pad_tokens([s.advantages for s in samples], width),
        "engine_logprobs": pad_tokens([s.engine_logprobs for s in samples], width),
        "n_response_tokens": int(lengths.sum()),
    }
    for name in ("old_logprobs", "ref_logprobs"):
        values = [getattr(s, name) for s in samples]
        if any(v is not None for v in values):
            if any(v is None for v in values):
                raise ValueError(f"some samples of a micro-batch have {name} and some do not")
            batch[name] = pad_tokens(values, width)
    for name in samples[0].extra:
        batch[name] = pad_tokens([s.extra[name] for s in samples], width)
    if correction != "none" and "old_logprobs" in batch:
        from posttrain.rl.correction import rollout_correction

        fix = rollout_correction(batch["old_logprobs"], batch["engine_logprobs"], batch["loss_mask"], correction,
                                 cap=tis_cap)
        batch["loss_mask"] = fix.mask
        batch["correction_weights"] = fix.weights
    return batch
