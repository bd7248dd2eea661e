"""The policy wrapper every stage shares: load a model and tokenizer, apply the chat
template, optional LoRA, per-token log-probs of responses, generation, and saving as a
plain ``save_pretrained`` folder that transformers and vLLM load unchanged."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from posttrain.logprobs import pad_sequences, positions_from_mask, response_logprobs
from posttrain.models.chat_template import OLMO2_CHAT_TEMPLATE

__all__ = ["LoraSettings", "Policy", "pad_sequences", "pick_device", "pick_dtype", "positions_from_mask",
           "prepare_tokenizer"]

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]


@dataclass
class LoraSettings:
    """LoRA adapter settings, passed to ``peft.LoraConfig``."""

    r: int = 16
    """Rank of the update matrices."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter's input."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names that get adapters (OLMo 2's attention and MLP projections)."""


def pick_device(device: str | None = None) -> torch.device:
    """The given device, else CUDA when present, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(dtype: str, device: torch.device, *, trainable: bool = False, lora: bool = False) -> torch.dtype:
    """The dtype to load weights in (``posttrain.training.precision.weights_dtype``):
    ``auto`` is fp32 for weights that will be trained (the master copy; compute goes bf16
    through mixed precision), bf16 for frozen ones on a GPU that has it (a LoRA policy's
    base included), and fp32 on a CPU, where bf16 matmuls are 70-250x slower."""
    from posttrain.training.precision import weights_dtype

    return weights_dtype(dtype, device.type, trainable=trainable, lora=lora)


class Policy:
    """A causal LM and its tokenizer, with the operations the stages need."""

    def __init__(self, model, tokenizer, device: torch.device):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        lora: LoraSettings | None = None,
        gradient_checkpointing: bool = False,
        trainable: bool = False,
    ) -> "Policy":
        """Load from a local ``save_pretrained`` folder or a hub id (with ``revision``, e.g.
        OLMo's ``stepN-tokensMB`` intermediate checkpoints). ``trainable``: the weights will
        be trained, so ``dtype: auto`` loads them in fp32 (``pick_dtype``)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dev = pick_device(device)
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), revision=revision)
        prepare_tokenizer(tokenizer)
        model = AutoModelForCausalLM.from_pretrained(
            str(name_or_path), revision=revision,
            dtype=pick_dtype(dtype, dev, trainable=trainable, lora=lora is not None)
        ).to(dev)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            if gradient_checkpointing:
                model.enable_input_require_grads()
            model = get_peft_model(
                model,
                LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                           target_modules=list(lora.target_modules), task_type="CAUSAL_LM"),
            )
        return cls(model, tokenizer, dev)

    @property
    def is_lora(self) -> bool:
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    def disabled_adapter(self):
        """Context manager: inside it the LoRA policy computes as its base model. With LoRA
        this is DPO's frozen reference, without a second copy of the weights."""
        if not self.is_lora:
            raise RuntimeError("disabled_adapter() needs a LoRA policy")
        return self.model.disable_adapter()

    # ------------------------------------------------------------------ chat
    def chat_ids(self, messages: Messages, add_generation_prompt: bool = False) -> list[int]:
        """Token ids of a conversation in the model's chat template."""
        out = self.tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
        )
        return list(out["input_ids"])

    # ------------------------------------------------------------------ log-probs
    def response_logprobs(
        self,
        prompts: Sequence[Sequence[int]],
        responses: Sequence[Sequence[int]],
        *,
        batch_size: int = 16,
        padding_side: str = "right",
        temperature: float = 1.0,
    ) -> list[torch.Tensor]:
        """Per-token log-probs of each response given its prompt, one 1-D tensor per
        example (length = its response length), no grad. Batched; padding on either side
        gives the same numbers as scoring each example alone. The LM head runs on the
        response positions only (``posttrain.logprobs``)."""
        return response_logprobs(self.model, prompts, responses, self.tokenizer.pad_token_id, temperature=temperature,
                                 batch_size=batch_size, padding_side=padding_side, device=self.device)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        conversations: Sequence[Messages],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 32,
        progress: bool = False,
    ) -> list[str]:
        """Complete each conversation with one assistant turn (greedy when temperature is
        0) and return the decoded texts, special tokens stripped."""
        from tqdm.auto import tqdm

        self.model.eval()
        prompts = [self.chat_ids(m, add_generation_prompt=True) for m in conversations]
        # Longest first keeps padding small within each batch; order is restored below.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        texts: list[str] = [""] * len(prompts)
        sampling = temperature > 0
        bar = tqdm(total=len(prompts), desc="generate", unit="seq", disable=not progress)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = pad_sequences([prompts[i] for i in idx], self.tokenizer.pad_token_id, "left")
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=max_new_tokens,
                do_sample=sampling,
                temperature=temperature if sampling else None,
                top_p=top_p if sampling else None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
            for row, i in enumerate(idx):
                texts[i] = self.tokenizer.decode(out[row, ids.shape[1] :], skip_special_tokens=True)
            bar.update(len(idx))
        bar.close()
        return texts

    # ------------------------------------------------------------------ saving
    def save(self, out_dir: str | Path, state_dict: dict | None = None) -> Path:
        """Write a plain ``save_pretrained`` folder (model + tokenizer). A LoRA policy is
        saved merged, so transformers and vLLM load it with no peft; its adapter alone is
        kept beside it in ``adapter/``. ``state_dict``: the full weights to write instead
        of the model's own (sharded training gathers them first)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model = self.model
        if self.is_lora:
            if state_dict is not None:
                raise NotImplementedError("saving a LoRA policy from a gathered state dict")
            model.save_pretrained(out / "adapter")
            # merge_and_unload mutates the model in place, so merge a copy: training goes on.
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(out, state_dict=state_dict)
        self.tokenizer.save_pretrained(out)
        return out


def prepare_tokenizer(tokenizer) -> None:
    """Make a loaded tokenizer usable for chat training: OLMo 2 Instruct's template where
    the checkpoint has none (base models ship none), and a pad token distinct from EOS
    where the vocabulary has one."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = OLMO2_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        vocab = tokenizer.get_vocab()
        tokenizer.pad_token = "<|pad|>" if "<|pad|>" in vocab else tokenizer.eos_token
