"""Data: chat formatting with assistant-only labels, the open-instruct style mixer, the
tokenization cache, SFT examples and the seeded tiny arithmetic task."""

from posttrain.data.cache import cached, cache_key, default_cache_dir, sources_fingerprint, tokenizer_fingerprint
from posttrain.data.chat import IGNORE_INDEX, fit_length, prompt_ids, tokenize_chat, validate_messages
from posttrain.data.mixer import load_rows, mix, sample_indices
from posttrain.data.sft import build_sft_examples

__all__ = [
    "IGNORE_INDEX", "build_sft_examples", "cache_key", "cached", "default_cache_dir", "fit_length", "load_rows",
    "mix", "prompt_ids", "sample_indices", "sources_fingerprint", "tokenize_chat", "tokenizer_fingerprint",
    "validate_messages",
]
