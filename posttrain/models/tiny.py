"""The tiny OLMo-2: a real ``Olmo2ForCausalLM`` small enough to train in minutes on two
CPU cores, with a small byte-level BPE tokenizer built by the project.

Everything is made from a seed and text in this file, so ``posttrain init-model`` gives
the same folder on every machine and nothing is downloaded. The architecture is OLMo 2's
(``Olmo2Config``: RMSNorm after attention and MLP, QK-norm, SwiGLU, RoPE, no biases);
only the sizes are small.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from posttrain.models.chat_template import OLMO2_CHAT_TEMPLATE

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# Role markers are single tokens in the tiny vocabulary so that a 3M-parameter model does
# not spend capacity spelling them; the real OLMo 2 tokenizer splits them into pieces.
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]


@dataclass(frozen=True)
class TinyModelSpec:
    """Sizes of the tiny OLMo-2. Defaults give ~3.6M parameters."""

    vocab_size: int = 512
    """Target BPE vocabulary size, special and role tokens included."""
    hidden_size: int = 256
    """Width of the residual stream."""
    intermediate_size: int = 688
    """Width of the SwiGLU MLP."""
    num_hidden_layers: int = 4
    """Transformer blocks."""
    num_attention_heads: int = 4
    """Attention heads (head size = hidden_size / heads)."""
    max_position_embeddings: int = 1024
    """Longest sequence the model is configured for."""
    rope_theta: float = 500_000.0
    """RoPE base, as in OLMo 2."""


# Text the tokenizer's merges are learned from: the words of everyday instructions and of
# arithmetic, so the bundled tasks tokenize compactly. Any other text still tokenizes
# (byte-level BPE falls back to bytes).
_WORDS = """
the a an of to and or in on is are was be it that this for with as by at from you your
what how many much do does did get if we they he she his her their our my me i not no yes
answer question problem step first then next so therefore result final total number numbers
add plus sum subtract minus take away difference between more less than times multiply
divide equals equal calculate compute find work out tell give please show solve evaluate
give me can could would will should value left right start end begin finally thus hence
carry borrow ones tens hundreds digit digits write response short long sentence paragraph
word words letter letters title list bullet section json format lowercase uppercase english
true false correct wrong because which who when where why one two three four five six seven
eight nine ten zero hello world thanks thank sure here there let us see check again now
"""
_PHRASES = [
    "What is {a} + {b}?", "Calculate {a} + {b} =", "{a}+{b}=?", "Compute {b} minus {a}.",
    "What do you get if you add {a} and {b}?", "What is {b} - {a}?", "Subtract {a} from {b}.",
    "The answer is {c}.", "{a} + {b} = {c}", "{b} - {a} = {c}", "So the answer is {c}.",
    "First, add the ones: {a} + {b} = {c}. Then the tens.", "#### {c}",
]


def _tokenizer_corpus() -> list[str]:
    words = _WORDS.split()
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [w.capitalize() for w in words]
    for i, phrase in enumerate(_PHRASES):
        a, b = i % 10, (3 * i + 7) % 100
        lines.append(phrase.format(a=a, b=b, c=a + b))
    return lines * 4


def build_tiny_tokenizer(vocab_size: int = TinyModelSpec.vocab_size):
    """A byte-level BPE tokenizer with digits split one per token (as OLMo 2's does),
    OLMo 2's special tokens (``<|endoftext|>`` as BOS and EOS, ``<|pad|>``) and OLMo 2
    Instruct's chat template. Returns a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=TinyModelSpec.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = OLMO2_CHAT_TEMPLATE
    return fast


def init_tiny_model(out_dir: str | Path, seed: int = 0, spec: TinyModelSpec | None = None) -> Path:
    """Write a randomly initialised tiny OLMo-2 and its tokenizer to ``out_dir`` as a
    ``save_pretrained`` folder. The same seed and spec give the same weights."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    spec = spec or TinyModelSpec()
    out = Path(out_dir)
    tokenizer = build_tiny_tokenizer(spec.vocab_size)
    config = Olmo2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attention_bias=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    # Initialise on a private generator so the weights depend on the seed alone, not on
    # whatever the caller did with the global RNG before.
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Olmo2ForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "posttrain_init.json").write_text(json.dumps({"seed": seed, **asdict(spec)}, indent=2))
    return out
