"""The ``hf`` rollout engine: a lean sampling loop over the model's forward with its KV
cache (``kv_sampling.py``: each prompt prefilled once for its ``n`` samples), or
transformers' ``generate`` for models that loop does not handle (``lean=False`` forces
it); batched with left padding, prompts sorted by length.

Weights: by default the engine *shares the trainer's model object*
(``HFEngine(model, tokenizer)``): generation runs on the very parameters the optimizer
just stepped, so a weight sync costs nothing and can never be stale, and no second copy
of the model takes memory. ``update_weights`` is then a no-op. ``HFEngine.load(dir)``
(or ``make_engine("hf", dir, tok)`` without ``model=``) holds *its own copy* instead,
loaded from a folder and refreshed only by ``update_weights``, like a vLLM engine: that
is what tests of weight sync, and setups that keep an older policy for sampling, use.

Log-probs: both paths record ``log_softmax`` of the scores after the temperature, top-k
and top-p warpers, one ``(batch, vocab)`` tensor at a time (under ``generate``, a logits
processor placed after the warpers picks out each sampled token one step later, instead
of ``output_logits``' tensor per step). With top-k/top-p off (the RL setting) that is
exactly ``log_softmax(logits / temperature)``, the quantity a trainer recomputes; with them on,
it is the truncated, renormalised distribution that actually sampled, as vLLM's
``processed_logprobs`` reports.

Seeds: with ``sampling.seed`` set, the call runs under ``torch.random.fork_rng`` seeded
with it, so the same seed, prompts, n, batch size and weights give the same samples and
the caller's global RNG stream is left exactly where it was (exact resume is kept).
Without a seed it draws from (and advances) the global stream, like any sampling op.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterable, Sequence

import torch

from posttrain.rollout.base import Rollouts, SamplingConfig
from posttrain.rollout.common import check_request, cut_at_stop, longest_first
from posttrain.rollout.kv_sampling import can_sample_with_cache, group_runs, sample_with_cache, warpers


class _SampledLogprobs:
    """A logits processor that records ``log_softmax(scores)`` of each step and, at the
    next step (once the sampled token is in ``input_ids``), that token's log-prob."""

    def __init__(self):
        self.prev: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prev is not None:
            self.steps.append(self.prev.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.prev = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def collect(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """``(B, new)`` log-probs of the generated tokens ``new_tokens`` ``(B, new)``."""
        steps = list(self.steps)
        if len(steps) < new_tokens.shape[1] and self.prev is not None:
            steps.append(self.prev.gather(-1, new_tokens[:, len(steps) : len(steps) + 1]).squeeze(-1))
        out = torch.stack(steps[: new_tokens.shape[1]], dim=1) if steps else new_tokens.new_zeros(new_tokens.shape,
                                                                                                   dtype=torch.float)
        self.prev, self.steps = None, []
        return out


def _unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class HFEngine:
    """Rollouts from transformers' ``generate``. See the module docstring for weight
    sharing, log-probs and seeds."""

    kind = "hf"

    def __init__(self, model, tokenizer, *, batch_size: int = 64, owns_model: bool = False, lean: bool = True):
        self.model = _unwrap(model)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.lean = lean and can_sample_with_cache(self.model)
        """Sample with ``kv_sampling.sample_with_cache`` (prompts prefilled once per
        group); False: transformers' ``generate`` (the fallback for models the lean loop
        does not handle)."""
        self.owns_model = owns_model
        self.weight_syncs = 0

    @classmethod
    def load(cls, model_dir: str | Path, tokenizer=None, *, dtype: str = "auto", device: str | None = None,
             batch_size: int = 64, lean: bool = True) -> "HFEngine":
        """An engine with its own copy of the model in ``model_dir`` (refreshed only by
        ``update_weights``)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from posttrain.policy import pick_device, pick_dtype, prepare_tokenizer

        dev = pick_device(device)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            prepare_tokenizer(tokenizer)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=pick_dtype(dtype, dev)).to(dev)
        model.eval().requires_grad_(False)
        return cls(model, tokenizer, batch_size=batch_size, owns_model=True, lean=lean)

    @property
    def shares_weights(self) -> bool:
        """True when the engine samples from the trainer's own model object (sync is free)."""
        return not self.owns_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, prompt_token_ids: Sequence[Sequence[int]], n: int, sampling: SamplingConfig) -> Rollouts:
        check_request(prompt_token_ids, n, sampling)
        start = time.perf_counter()
        order = longest_first(prompt_token_ids)
        rows = [(i, j) for i in order for j in range(n)]
        tokens: list[list[int]] = [[] for _ in rows]
        logprobs: list[list[float]] = [[] for _ in rows]
        reasons: list[str] = ["length"] * len(rows)
        model = self.model
        was_training = model.training
        model.eval()  # no dropout while sampling; restored below for a shared model
        device = self.device
        # fork_rng saves and restores the CPU stream and, on a GPU, that device's stream.
        fork = (torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])
                if sampling.seed is not None else contextlib.nullcontext())
        try:
            with fork:
                if sampling.seed is not None:
                    torch.random.default_generator.manual_seed(sampling.seed)
                    if device.type == "cuda":
                        with torch.cuda.device(device):
                            torch.cuda.manual_seed(sampling.seed)
                for b in range(0, len(rows), self.batch_size):
                    chunk = rows[b : b + self.batch_size]
                    if self.lean:
                        unique, counts = group_runs([i for i, _ in chunk])
                        new_t, lps_t = sample_with_cache(model, [prompt_token_ids[i] for i in unique], counts,
                                                         sampling, self.tokenizer.pad_token_id)
                        new, lps = new_t.tolist(), lps_t.tolist()
                    else:
                        new, lps = self._generate_batch([prompt_token_ids[i] for i, _ in chunk], sampling)
                    for k, (i, j) in enumerate(chunk):
                        toks, reason = cut_at_stop(new[k], sampling.stop_token_ids)
                        slot = i * n + j
                        tokens[slot], reasons[slot] = toks, reason
                        logprobs[slot] = lps[k][: len(toks)]
        finally:
            model.train(was_training)
        texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        elapsed = time.perf_counter() - start
        out = Rollouts(prompt_index=[i for i in range(len(prompt_token_ids)) for _ in range(n)], token_ids=tokens,
                       texts=texts, logprobs=logprobs, finish_reasons=reasons)  # type: ignore[arg-type]
        out.extra.update(generate_s=elapsed, tokens=out.num_tokens, engine="hf")
        return out

    def _generate_batch(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig):
        from transformers import GenerationConfig, LogitsProcessorList

        from posttrain.logprobs import pad_sequences

        pad = self.tokenizer.pad_token_id
        ids, mask = pad_sequences(prompts, pad, "left")
        recorder = _SampledLogprobs()
        # The warpers are passed as our own processors, ahead of the recorder, and the
        # config's own are switched off (temperature 1, top_k 0, top_p 1) so that none
        # run twice or after the recorder.
        processors = [*warpers(sampling), recorder]
        stop = list(sampling.stop_token_ids)
        # top_k 0 disables transformers' default of 50 (greedy decoding ignores it and would warn).
        no_top_k = {} if sampling.greedy else {"top_k": 0}
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens, min_new_tokens=0, do_sample=not sampling.greedy,
            temperature=1.0, top_p=1.0, repetition_penalty=1.0, num_beams=1, **no_top_k,
            # An explicit (possibly empty) list: None would fall back to the model's EOS.
            eos_token_id=stop, pad_token_id=pad, use_cache=True,
        )
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                  generation_config=config, logits_processor=LogitsProcessorList(processors))
        new = out[:, ids.shape[1] :]
        lps = recorder.collect(new)
        return new.tolist(), lps.tolist()

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy the trainer's weights into the engine's own model. For an engine that
        shares the trainer's model the weights are already current: nothing is copied
        (the iterable is not consumed)."""
        self.weight_syncs += 1
        if self.shares_weights:
            return
        state = self.model.state_dict()
        for name, tensor in named_tensors:
            if name not in state:
                raise KeyError(f"update_weights: {name!r} is not a weight of the engine's model")
            state[name].copy_(tensor.detach())

    def sleep(self) -> None:
        """Nothing to free: the KV cache lives only during ``generate``."""

    def wake(self) -> None:
        """See ``sleep``."""

    def close(self) -> None:
        if self.owns_model:
            self.model = None  # type: ignore[assignment]
