"""IFEval's 25 instruction types as a table of small strict checkers.

Each checker follows the rules of Google's reference IFEval checker (the
``instruction_following_eval`` code that lm-eval ships), so that per-instruction
results match it exactly; ``tests/verifiers/test_ifeval.py`` proves this on the
834 instructions of the public GPT-4 responses. Where the reference would invent
a random argument for a missing or out-of-range kwarg, we raise ``ValueError``
instead: a verifier must never grade against a made-up target.

A checker receives the response and its validated kwargs and returns whether the
instruction was followed. The empty-response rule (a blank response follows
nothing) lives in ``follow_instructions`` in ``__init__``, as in the reference.
"""

from __future__ import annotations

import functools
import json
import operator
import re
from typing import Any, Callable

import langdetect
from langdetect import DetectorFactory
from langdetect.lang_detect_exception import LangDetectException

from . import params as p
from .sentences import count_words, sent_tokenize, word_tokenize

# langdetect samples n-grams at random; a fixed seed makes a score reproducible.
DetectorFactory.seed = 0
# Its language profiles (~0.6 s to load) are loaded here, at import, rather than on the
# first call in each scoring worker: the scorer imports verifiers before it forks workers,
# so the workers (and the spares it forks later) start with them loaded.
langdetect.detector_factory.init_factory()

# The two comparisons IFEval's length and frequency instructions use.
RELATIONS: dict[str, Callable[[int, int], bool]] = {"less than": operator.lt, "at least": operator.ge}

_RELATION = p.one_of(RELATIONS)

CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


# Instruction id -> checker; each checker below registers itself with ``@_instruction``.
INSTRUCTIONS: dict[str, p.Checker] = {}
_instruction = p.registrar(INSTRUCTIONS)


# ---------------------------------------------------------------- shared helpers


@functools.lru_cache(maxsize=4096)
def _pattern(source: str, flags: int = 0) -> re.Pattern[str]:
    """Compile a kwarg that the reference uses as a regex; literal text if it is not one.

    The reference passes keywords and markers to ``re`` unescaped, so ``a.b``
    matches ``axb`` there and must here too; a keyword such as ``C++`` would
    crash the reference, and is matched literally instead.
    """
    try:
        return re.compile(source, flags)
    except re.error:
        return re.compile(re.escape(source), flags)


def detect_language(text: str) -> str | None:
    """langdetect's language code for ``text``, or None when it cannot tell."""
    try:
        return langdetect.detect(text)
    except LangDetectException:
        return None


# ---------------------------------------------------------------- keywords


@_instruction("keywords:existence", keywords=p.words)
def keywords_existence(response: str, *, keywords: tuple[str, ...]) -> bool:
    """Every keyword occurs somewhere, any case, even inside a longer word."""
    return all(_pattern(word, re.IGNORECASE).search(response) for word in keywords)


@_instruction("keywords:frequency", keyword=p.text, frequency=p.count, relation=_RELATION)
def keywords_frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    """Occurrences of the keyword (any case, substrings count) compared with the target."""
    found = len(_pattern(keyword, re.IGNORECASE).findall(response))
    return RELATIONS[relation](found, frequency)


@_instruction("keywords:forbidden_words", forbidden_words=p.words)
def keywords_forbidden_words(response: str, *, forbidden_words: tuple[str, ...]) -> bool:
    """No forbidden word as a whole word, any case (``cat`` does not forbid ``category``)."""
    return not any(_pattern(rf"\b{word}\b", re.IGNORECASE).search(response) for word in forbidden_words)


@_instruction("keywords:letter_frequency", letter=p.lowered(p.character), let_frequency=p.count, let_relation=_RELATION)
def keywords_letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    """Occurrences of one character, either case, compared with the target.

    IFEval's own data names non-letters too (``#`` for hashtags, ``!``); the
    reference swaps those for a random letter, making its result a coin toss, so
    we count the character the prompt actually names.
    """
    return RELATIONS[let_relation](response.lower().count(letter), let_frequency)


# ---------------------------------------------------------------- language and case


@_instruction("language:response_language", language=p.text)
def response_language(response: str, *, language: str) -> bool:
    """langdetect names the required language; undetectable text is given the benefit of the doubt."""
    detected = detect_language(response)
    return detected is None or detected == language


@_instruction("change_case:english_capital")
def english_capital(response: str) -> bool:
    """All cased letters are capitals and the text reads as English (undetectable passes)."""
    return response.isupper() and detect_language(response) in (None, "en")


@_instruction("change_case:english_lowercase")
def english_lowercase(response: str) -> bool:
    """All cased letters are lower case and the text reads as English (undetectable passes)."""
    return response.islower() and detect_language(response) in (None, "en")


@_instruction("change_case:capital_word_frequency", capital_frequency=p.count, capital_relation=_RELATION)
def capital_word_frequency(response: str, *, capital_frequency: int, capital_relation: str) -> bool:
    """All-capital NLTK word tokens (``U.S.``, ``AI-BASED`` count once) compared with the target."""
    capitals = sum(1 for token in word_tokenize(response) if token.isupper())
    return RELATIONS[capital_relation](capitals, capital_frequency)


# ---------------------------------------------------------------- length


@_instruction("length_constraints:number_sentences", num_sentences=p.count, relation=_RELATION)
def number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
    """Punkt sentence count (NLTK's English model) compared with the target."""
    return RELATIONS[relation](len(sent_tokenize(response)), num_sentences)


@_instruction("length_constraints:number_words", num_words=p.count, relation=_RELATION)
def number_words(response: str, *, num_words: int, relation: str) -> bool:
    """Count of ``\\w+`` runs compared with the target (``don't`` is two words)."""
    return RELATIONS[relation](count_words(response), num_words)


_DIVIDER = re.compile(r"\s?\*\*\*\s?")


@_instruction("length_constraints:number_paragraphs", num_paragraphs=p.count)
def number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    """Exactly N paragraphs between ``***`` dividers; a divider may open or close the
    text, but two dividers with nothing between them break the format."""
    parts = _DIVIDER.split(response)
    count = len(parts)
    for index, part in enumerate(parts):
        if not part.strip():
            if index in (0, len(parts) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


_FIRST_WORD_STOP = frozenset(".,?!'\"")


def _nth_paragraph_params(kwargs: dict[str, Any]) -> None:
    """The reference picks a random paragraph when ``nth_paragraph`` is out of range."""
    if not 1 <= kwargs["nth_paragraph"] <= kwargs["num_paragraphs"]:
        raise ValueError(
            f"kwarg 'nth_paragraph' must be between 1 and num_paragraphs={kwargs['num_paragraphs']}, "
            f"got {kwargs['nth_paragraph']!r}"
        )


@_instruction(
    "length_constraints:nth_paragraph_first_word",
    num_paragraphs=p.count,
    nth_paragraph=p.count,
    first_word=p.lowered(p.raw_text),
)
def nth_paragraph_first_word(response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """Exactly N non-blank paragraphs split on blank lines, and paragraph n opens with the word.

    Blank chunks do not count as paragraphs but still occupy a position, as in the
    reference; the first word is lower-cased and cut at the first punctuation mark.
    """
    paragraphs = response.split("\n\n")
    count = sum(1 for paragraph in paragraphs if paragraph.strip())
    if nth_paragraph > count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    opening = []
    for char in word:
        if char in _FIRST_WORD_STOP:
            break
        opening.append(char.lower())
    return count == num_paragraphs and "".join(opening) == first_word


# ---------------------------------------------------------------- detectable content


_PLACEHOLDER = re.compile(r"\[.*?\]")


@_instruction("detectable_content:number_placeholders", num_placeholders=p.count)
def number_placeholders(response: str, *, num_placeholders: int) -> bool:
    """At least N square-bracket placeholders such as ``[address]`` (``[]`` counts)."""
    return len(_PLACEHOLDER.findall(response)) >= num_placeholders


_PS = re.compile(r"\s*p\.\s?s\..*$", re.MULTILINE)
_PPS = re.compile(r"\s*p\.\s?p\.\s?s.*$", re.MULTILINE)


@_instruction("detectable_content:postscript", postscript_marker=p.text)
def postscript(response: str, *, postscript_marker: str) -> bool:
    """The marker appears, any case; ``P.S.``/``P.P.S`` also match spaced forms like ``p. s.``."""
    if postscript_marker == "P.P.S":
        pattern = _PPS
    elif postscript_marker == "P.S.":
        pattern = _PS
    else:
        pattern = _pattern(r"\s*" + postscript_marker.lower() + r".*$", re.MULTILINE)
    return pattern.search(response.lower()) is not None


# ---------------------------------------------------------------- detectable format


_STAR_BULLET = re.compile(r"^\s*\*[^\*].*$", re.MULTILINE)
_DASH_BULLET = re.compile(r"^\s*-.*$", re.MULTILINE)


@_instruction("detectable_format:number_bullet_lists", num_bullets=p.count)
def number_bullet_lists(response: str, *, num_bullets: int) -> bool:
    """Exactly N lines starting with ``* `` or ``-`` (a ``**bold**`` line is not a bullet)."""
    return len(_STAR_BULLET.findall(response)) + len(_DASH_BULLET.findall(response)) == num_bullets


@_instruction("detectable_format:constrained_response")
def constrained_response(response: str) -> bool:
    """One of IFEval's fixed answers (``My answer is yes.`` ...) appears anywhere."""
    text = response.strip()
    return any(option in text for option in CONSTRAINED_RESPONSE_OPTIONS)


_SINGLE_HIGHLIGHT = re.compile(r"\*[^\n\*]*\*")
_DOUBLE_HIGHLIGHT = re.compile(r"\*\*[^\n\*]*\*\*")


@_instruction("detectable_format:number_highlighted_sections", num_highlights=p.count)
def number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
    """At least N non-blank ``*spans*`` on one line; a ``**span**`` is found by both
    patterns and so counts twice, as in the reference."""
    single = sum(1 for span in _SINGLE_HIGHLIGHT.findall(response) if span.strip("*").strip())
    double = sum(1 for span in _DOUBLE_HIGHLIGHT.findall(response) if span[2:-2].strip())
    return single + double >= num_highlights


@_instruction("detectable_format:multiple_sections", section_spliter=p.text, num_sections=p.count)
def multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    """At least N headers of the form ``<splitter> <number>`` (e.g. ``SECTION 2``), case as given."""
    parts = _pattern(r"\s?" + section_spliter + r"\s?\d+\s?").split(response)
    return len(parts) - 1 >= num_sections


@_instruction("detectable_format:json_format")
def json_format(response: str) -> bool:
    """The whole response parses as JSON once an optional ```json fence is removed."""
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        text = text.removeprefix(fence)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


_TITLE = re.compile(r"<<[^\n]+>>")


@_instruction("detectable_format:title")
def title(response: str) -> bool:
    """A non-blank one-line title in double angular brackets, like ``<<poem of joy>>``."""
    return any(found.lstrip("<").rstrip(">").strip() for found in _TITLE.findall(response))


# ---------------------------------------------------------------- combination


@_instruction("combination:two_responses")
def two_responses(response: str) -> bool:
    """Two different non-blank answers separated by ``******``; a blank answer in the middle fails."""
    parts = response.split("******")
    answers = []
    for index, part in enumerate(parts):
        if part.strip():
            answers.append(part.strip())
        elif index not in (0, len(parts) - 1):
            return False
    return len(answers) == 2 and answers[0] != answers[1]


@_instruction("combination:repeat_prompt", prompt_to_repeat=p.raw_text)
def repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    """The response opens with the request, ignoring case and outer whitespace."""
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


# ---------------------------------------------------------------- start/end and punctuation


@_instruction("startend:end_checker", end_phrase=p.text)
def end_checker(response: str, *, end_phrase: str) -> bool:
    """The response ends with the phrase, ignoring case, outer whitespace and outer quotes."""
    return response.strip().strip('"').lower().endswith(end_phrase.lower())


@_instruction("startend:quotation")
def quotation(response: str) -> bool:
    """The stripped response starts and ends with a double quote (a lone ``"`` does not)."""
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


@_instruction("punctuation:no_comma")
def no_comma(response: str) -> bool:
    """No ASCII comma anywhere (the full-width ``，`` is not checked by IFEval)."""
    return "," not in response


# ---------------------------------------------------------------- building


# Cross-kwarg checks that a per-kwarg validator cannot make.
_EXTRA_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "length_constraints:nth_paragraph_first_word": _nth_paragraph_params,
}


def build(instruction_id: Any, kwargs: Any) -> Callable[[str], bool]:
    """Return ``response -> followed`` for one instruction, or raise ValueError.

    ``None`` kwargs are dropped first: datasets such as HF ``google/IFEval`` give
    every instruction the union of all kwarg names, with ``None`` for unused ones.
    """
    instruction = INSTRUCTIONS.get(instruction_id) if isinstance(instruction_id, str) else None
    if instruction is None:
        raise ValueError(f"unknown IFEval instruction id {instruction_id!r}")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"kwargs for {instruction_id} must be a dict, got {type(kwargs).__name__}")
    checked = p.bind(instruction_id, instruction.params, kwargs, _EXTRA_CHECKS.get(instruction_id))
    return functools.partial(instruction.check, **checked)
