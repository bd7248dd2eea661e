"""Model presets: the tiny OLMo-2 that the CPU recipe and the tests train."""
from posttrain.models.tiny import TinyModelSpec, build_tiny_tokenizer, init_tiny_model

__all__ = ["TinyModelSpec", "build_tiny_tokenizer", "init_tiny_model"]
