"""Scoring preference pairs, and the on-disk cache of the reference model's scores.

``pair_logps`` runs one forward over a collated batch (both sides of each pair share one
row: prompt and common response start computed once) and returns each sequence's summed
response log-prob. Through ``posttrain.logprobs.logprobs_at`` it projects only the scored
positions to the vocabulary where the architecture allows it: prompt positions never
become logits (OLMo 2's vocabulary is 100k wide).

The reference log-probs of a dataset depend on the reference weights, the token ids of
the pairs (which fix data, tokenizer, chat template, max length and truncation) and
nothing else, so they are computed once and stored under a key hashing those.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

import torch

from posttrain.data.preference import PreferencePair, collate_pairs, pair_row_length
from posttrain.logprobs import logprobs_at

log = logging.getLogger(__name__)


def pair_logps(model, batch: dict[str, torch.Tensor], *, generic: bool = False) -> torch.Tensor:
    """Summed response log-probs of both sides of every pair of a :func:`collate_pairs`
    batch, shape ``(2B,)``: chosen ones first. Differentiable when called with grad
    enabled. ``generic`` forces the path any causal LM takes (full logits)."""
    mask = batch["attention_mask"]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(getattr(base, "config", None), "_attn_implementation", "sdpa") == "eager":
        mask = torch.zeros(mask.shape, dtype=base.dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(base.dtype).min)  # eager attention adds the mask to the scores
    tok = logprobs_at(model, batch["input_ids"], (batch["score_row"], batch["score_pos"]), batch["score_target"],
                      attention_mask=mask, position_ids=batch["position_ids"], generic=generic).logprobs
    n = 2 * batch["chosen_tokens"].shape[0]
    return torch.zeros(n, dtype=tok.dtype, device=tok.device).index_add(0, batch["score_out"], tok)


def length_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of pairs in batches of similar length: longest first (ties in index order),
    each batch as many pairs as fit ``max_tokens`` padded tokens (at least one); the
    first pair of a batch is its longest and sets its padded width."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, start = [], 0
    while start < len(order):
        per = max(1, max_tokens // lengths[order[start]])
        batches.append(order[start : start + per])
        start += per
    return batches


@torch.no_grad()
def score_batches(model, pairs: Sequence[PreferencePair], batches: Sequence[Sequence[int]], pad_id: int, device, *,
                  progress: bool = True, desc: str = "reference log-probs") -> list[tuple[list[float], list[float]]]:
    """``(chosen, rejected)`` summed log-probs of the pairs of each batch (indices into
    ``pairs``), no grad, one forward per batch."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    out = []
    bar = tqdm(total=sum(len(b) for b in batches), desc=desc, unit="pair", disable=not progress)
    for idx in batches:
        batch = {k: v.to(device) if torch.is_tensor(v) else v
                 for k, v in collate_pairs([pairs[i] for i in idx], pad_id).items()}
        logps = pair_logps(model, batch).float().cpu()
        out.append((logps[: len(idx)].tolist(), logps[len(idx) :].tolist()))
        bar.update(len(idx))
    bar.close()
    model.train(was_training)
    return out


def score_pairs(model, pairs: Sequence[PreferencePair], pad_id: int, device, *, max_tokens: int = 2048,
                progress: bool = True, desc: str = "reference log-probs") -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs ``(chosen (N,), rejected (N,))`` of every pair, no grad, in batches
    of similar length holding up to ``max_tokens`` padded tokens each (``length_batches``).
    Under several processes each scores its share of the batches and all get every score
    (``posttrain.distributed.map_shared``); a batch is the same pairs whichever process
    scores it, so the scores are those of one process, bit for bit."""
    from posttrain.distributed import map_shared

    batches = length_batches([pair_row_length(p) for p in pairs], max_tokens)
    scored = map_shared(lambda mine: score_batches(model, pairs, mine, pad_id, device, progress=progress, desc=desc),
                        batches)
    chosen = torch.zeros(len(pairs), dtype=torch.float32)
    rejected = torch.zeros(len(pairs), dtype=torch.float32)
    for idx, (c, r) in zip(batches, scored):
        chosen[idx], rejected[idx] = torch.tensor(c), torch.tensor(r)
    return chosen, rejected


# ---------------------------------------------------------------------------- identity
def weights_fingerprint(model_path: str | Path, revision: str | None = None) -> str:
    """A hash of the weight files of a local model folder (config included), or of the hub
    id and revision when the path is not a local folder."""
    path = Path(model_path)
    h = hashlib.sha256()
    if not path.is_dir():
        h.update(f"hub:{model_path}@{revision}".encode())
        return h.hexdigest()
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise FileNotFoundError(f"no weight files in {path}")
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def pairs_fingerprint(pairs: Sequence[PreferencePair]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        for part in (p.prompt, p.chosen, p.rejected):
            h.update(len(part).to_bytes(4, "little"))
            h.update(torch.as_tensor(part, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    return h.hexdigest()


def reference_cache_key(weights: str, pairs: Sequence[PreferencePair], tokenizer, max_length: int) -> str:
    h = hashlib.sha256()
    for part in (weights, pairs_fingerprint(pairs), tokenizer_fingerprint(tokenizer), str(max_length)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def default_cache_dir() -> Path:
    root = os.environ.get("POSTTRAIN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "posttrain"
    return Path(root) / "dpo_reference"


def cached_reference_logps(model, pairs: Sequence[PreferencePair], pad_id: int, device, key: str,
                           cache_dir: str | Path | None = None, *, max_tokens: int = 2048,
                           progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Reference ``(chosen, rejected)`` summed log-probs from ``cache_dir/<key>.pt``, or
    computed (one no-grad pass) and stored there. The third value says whether the cache
    was hit.

    Under several processes every process calls this: the cache counts as hit only when
    every process can read it (nodes may not share a cache folder); otherwise the pass is
    split between them (``score_pairs``) and the main process writes the file. Nobody
    waits at a barrier while another works alone (only while it writes the scores)."""
    from posttrain.distributed import gather_objects, world_and_rank

    path = Path(cache_dir or default_cache_dir()) / f"{key}.pt"
    cached = _read_cache(path, len(pairs))
    if all(hit for hit in gather_objects(cached is not None)):
        log.info("reference log-probs: cache hit %s", path)
        return cached[0], cached[1], True
    chosen, rejected = score_pairs(model, pairs, pad_id, device, max_tokens=max_tokens, progress=progress)
    world, rank = world_and_rank()
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"chosen": chosen, "rejected": rejected}, tmp)
        os.replace(tmp, path)
        log.info("reference log-probs: %d pairs cached in %s", len(pairs), path)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # a small file's write: the next call on any process then finds it
    return chosen, rejected, False


def _read_cache(path: Path, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn file from a killed run: recompute it
        log.warning("reference cache %s unreadable (%s); recomputing", path, e)
        return None
    return (data["chosen"], data["rejected"]) if data["chosen"].shape[0] == n else None
