"""Scalar-head transformers: the reward model (``rm`` stage) and PPO's value model.

Both are transformers' ``AutoModelForSequenceClassification`` with ``num_labels=1``
(``Olmo2ForSequenceClassification`` for OLMo 2: the decoder plus a bias-free linear
``score`` head on the final hidden states), so a reward model is a plain
``save_pretrained`` folder that transformers, TRL and open-instruct load as they are.

- :func:`load_scalar_model` starts one from a causal LM folder (a new head, initialised
  as open-instruct's ``reward_modeling.py``: normal with std ``1/sqrt(hidden + 1)``, from
  Stiennon et al. 2020) or from a reward-model folder (its trained head kept: how Tülu 3 and
  OLMo 2 7B initialised their PPO value models).
- :func:`sequence_scores`: one score per sequence, read at its last real token (the
  model's own forward, so training and ``from_pretrained`` users read the same position);
- :func:`token_values`: the head applied at every position (PPO's per-token values).
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def is_scalar_model_folder(name_or_path: str | Path, revision: str | None = None) -> bool:
    """True when the checkpoint already is a one-output sequence classifier (a reward
    model), so its ``score`` head is trained and kept."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(name_or_path), revision=revision)
    archs = getattr(cfg, "architectures", None) or []
    return any(a.endswith("ForSequenceClassification") for a in archs) and cfg.num_labels == 1


@contextmanager
def _quiet_transformers():
    # A causal LM loaded as a classifier reports lm_head as unused and score as missing:
    # expected here, and logged below in one line instead.
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_scalar_model(name_or_path: str | Path, *, revision: str | None = None, dtype: str = "auto",
                      device: str | None = None, gradient_checkpointing: bool = False,
                      head_init_std: float | None = None):
    """A scalar-head model and its tokenizer as a ``posttrain.policy.Policy`` (so the
    shared trainer and checkpoints handle it like a policy). The tokenizer gets a pad token
    (``<|pad|>`` where the vocabulary has one) and the model's config the same
    ``pad_token_id``, which is how the model finds each row's last real token.

    From a causal LM the ``score`` head is new: normal with std ``head_init_std``
    (default ``1/sqrt(hidden_size + 1)``), drawn from torch's global RNG (seed first). From
    a reward model it is kept as trained."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from posttrain.policy import Policy, pick_device, pick_dtype, prepare_tokenizer

    dev = pick_device(device)
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), revision=revision)
    prepare_tokenizer(tokenizer)
    trained_head = is_scalar_model_folder(name_or_path, revision)
    with _quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(name_or_path), revision=revision, num_labels=1, dtype=pick_dtype(dtype, dev))
    model.config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        log.warning("the tokenizer has no pad token apart from EOS: scores are read at the last token "
                    "that is not EOS")
    if not trained_head:
        hidden = model.config.get_text_config().hidden_size
        std = head_init_std if head_init_std is not None else 1 / math.sqrt(hidden + 1)
        with torch.no_grad():
            model.score.weight.normal_(0.0, std)
        log.info("scalar head: new, normal(0, %.4g), on %s", std, name_or_path)
    else:
        log.info("scalar head: kept from %s", name_or_path)
    model.to(dev)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return Policy(model, tokenizer, dev)


def sequence_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float32: the score of each row, read by the model's own forward at its last
    token that is not padding (rows padded on either side with the config's pad id)."""
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.squeeze(-1).float()


def token_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, T)`` float32: the scalar head at every position (``out[:, t]`` is the value of
    the state after token ``t``). Calls the decoder and the head directly, so pass the
    unwrapped model (under DDP, ``accelerator.unwrap_model``: its gradients then need the
    caller's own synchronisation, or a wrapper module whose ``forward`` calls this)."""
    base = getattr(model, model.base_model_prefix)
    hidden = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=False).last_hidden_state
    return model.score(hidden).squeeze(-1).float()


class TokenValueModel(torch.nn.Module):
    """PPO's value model as the online trainer trains it: a scalar-head model whose
    ``forward`` returns the values at the requested flat ``positions`` (the layout of
    ``posttrain.stages.rlvr.batch.sequence_batch``), so DDP and the step engine's wrapper
    see every forward. Its weights, state dict and ``save_pretrained`` folder are the inner
    model's, without a prefix: checkpoints hold a plain
    ``AutoModelForSequenceClassification`` folder."""

    def __init__(self, scalar_model):
        super().__init__()
        self.model = scalar_model
        self.config = scalar_model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T)`` values at every position, or ``(N,)`` at the flat ``positions``
        (row-major indices into ``input_ids``)."""
        values = token_values(self.model, input_ids, attention_mask, position_ids)
        return values if positions is None else values.reshape(-1)[positions]

    # The inner model's names, so its folder and the checkpoint loader agree.
    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    def save_pretrained(self, folder, state_dict: dict | None = None, **kwargs) -> None:
        self.model.save_pretrained(folder, state_dict=state_dict, **kwargs)
