"""``ifeval_old``: the one-constraint ground truth of Tülu 3's ``allenai/RLVR-IFeval``.

Each row's ground truth is a JSON object naming one of open-instruct's
``if_functions`` (``{"func_name": "validate_lowercase", "N": null, ...}``), with
every possible argument present and ``None`` where unused. Its prompts were
written from open-instruct's templates, which differ from IFEval's wording (exact
counts, "around", ``* * *`` dividers), so each function maps to the IFEval
instruction it corresponds to *and* is checked with the rule its template
states, as open-instruct does: that is the reward the Tülu 3 recipe trained on.
Where the rule is IFEval's own (no commas, placeholders) the IFEval checker is
reused. Three deliberate departures from open-instruct, each where open-instruct
crashes or misreads its input: an out-of-range paragraph index raises
``ValueError``; undetectable language counts as not followed; a string
``options`` holding a Python tuple is read as that tuple, not character by
character.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Callable

from . import instructions
from . import params as p

QUANTIFIERS = ("at least", "at most", "around")
_QUANTIFIER = p.one_of(QUANTIFIERS)


def _meets(actual: int, target: int, quantifier: str, around: Callable[[int], int]) -> bool:
    """Compare a count with ``at least`` / ``at most`` / ``around`` (within ``around(N)``)."""
    if quantifier == "at least":
        return actual >= target
    if quantifier == "at most":
        return actual <= target
    return abs(actual - target) <= around(target)


def _ten_percent(target: int) -> int:
    """open-instruct's tolerance for "around N" words or capital words: 10%, at least 1."""
    return max(round(target * 0.1), 1)


def _options(name: str, value: Any) -> tuple[str, ...]:
    """A list of options, or a string holding a Python/JSON list or tuple, or one option."""
    if isinstance(value, str):
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = None
        value = list(parsed) if isinstance(parsed, (list, tuple)) else [value]
    return p.words(name, [str(option) for option in value] if isinstance(value, (list, tuple)) else value)


# open-instruct func_name -> checker (with the IFEval id it stands for), filled by ``@_old``.
OLD_FUNCTIONS: dict[str, p.Checker] = {}
_old = p.registrar(OLD_FUNCTIONS)


_WORD = re.compile(r"\b\w+\b")
_SENTENCE_BREAK = re.compile(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?|!)\s")
_PLACEHOLDER = re.compile(r"\[(.*?)\]")
_TITLE = re.compile(r"<<(.*?)>>")
_HIGHLIGHT = re.compile(r"\*(.*?)\*")
_CAPITAL_WORD = re.compile(r"\b[A-Z]+\b")


@_old("verify_keywords", "keywords:existence", keyword_list=p.words)
def keywords(text: str, *, keyword_list: tuple[str, ...]) -> bool:
    """Every keyword appears, any case, as plain text (no regex)."""
    lowered = text.lower()
    return all(word.lower() in lowered for word in keyword_list)


@_old("verify_keyword_frequency", "keywords:frequency", word=p.text, N=p.count)
def keyword_frequency(text: str, *, word: str, N: int) -> bool:
    """The word occurs exactly N times as a whole word, any case ("appear N times")."""
    target = word.lower()
    return sum(1 for found in _WORD.findall(text.lower()) if found == target) == N


@_old("validate_forbidden_words", "keywords:forbidden_words", forbidden_words=p.words)
def forbidden_words(text: str, *, forbidden_words: tuple[str, ...]) -> bool:
    """No forbidden word anywhere, any case, even inside another word."""
    lowered = text.lower()
    return not any(word.lower() in lowered for word in forbidden_words)


@_old("verify_letter_frequency", "keywords:letter_frequency", letter=p.character, N=p.count)
def letter_frequency(text: str, *, letter: str, N: int) -> bool:
    """The letter occurs exactly N times, case-sensitive."""
    return text.count(letter) == N


@_old("validate_response_language", "language:response_language", language=p.text)
def response_language(text: str, *, language: str) -> bool:
    """langdetect names the language; text it cannot classify does not count as that language."""
    return instructions.detect_language(text) == language


@_old("verify_paragraph_count", "length_constraints:number_paragraphs", N=p.count)
def paragraph_count(text: str, *, N: int) -> bool:
    """Exactly N non-empty paragraphs separated by the ``* * *`` divider."""
    cleaned = "\n".join(line.strip() for line in text.splitlines()).strip()
    parts = cleaned.split("* * *")
    return all(part.strip() for part in parts) and len(parts) == N


@_old("validate_word_constraint", "length_constraints:number_words", N=p.count, quantifier=_QUANTIFIER)
def word_constraint(text: str, *, N: int, quantifier: str) -> bool:
    """Whitespace-separated words against at least / at most / around (10%) N."""
    return _meets(len(text.split()), N, quantifier, _ten_percent)


@_old("verify_sentence_constraint", "length_constraints:number_sentences", N=p.count, quantifier=_QUANTIFIER)
def sentence_constraint(text: str, *, N: int, quantifier: str) -> bool:
    """Sentences split after . ? ! plus whitespace (sparing ``e.g.``/``Mr.``); around = within 1."""
    return _meets(len(_SENTENCE_BREAK.split(text)), N, quantifier, lambda _: 1)


def _paragraph_index(kwargs: dict[str, Any]) -> None:
    """open-instruct indexes paragraph i of N unchecked; an index outside 1..N is bad ground truth."""
    if not 1 <= kwargs["i"] <= kwargs["N"]:
        raise ValueError(f"kwarg 'i' must be between 1 and N={kwargs['N']}, got {kwargs['i']!r}")


@_old("validate_paragraphs", "length_constraints:nth_paragraph_first_word", N=p.count, first_word=p.text, i=p.count)
def paragraphs(text: str, *, N: int, first_word: str, i: int) -> bool:
    """Exactly N blank-line-separated chunks, the i-th starting with the word (case-sensitive)."""
    chunks = text.split("\n\n")
    return len(chunks) == N and chunks[i - 1].strip().startswith(first_word)


@_old("verify_postscript", "detectable_content:postscript", postscript_marker=p.text)
def postscript(text: str, *, postscript_marker: str) -> bool:
    """The marker appears and something follows it."""
    at = text.find(postscript_marker)
    return at >= 0 and len(text[at:].strip()) > len(postscript_marker)


@_old("validate_placeholders", "detectable_content:number_placeholders", N=p.count)
def placeholders(text: str, *, N: int) -> bool:
    """At least N ``[placeholders]``: IFEval's rule exactly."""
    return instructions.number_placeholders(text, num_placeholders=N)


@_old("verify_bullet_points", "detectable_format:number_bullet_lists", N=p.count)
def bullet_points(text: str, *, N: int) -> bool:
    """Exactly N lines that start, after indentation, with ``*`` or ``-``."""
    return sum(1 for line in text.split("\n") if line.strip().startswith(("*", "-"))) == N


@_old("validate_title", "detectable_format:title")
def title(text: str) -> bool:
    """Some ``<<title>>`` on one line (an empty one counts)."""
    return _TITLE.search(text) is not None


@_old("validate_choice", "detectable_format:constrained_response", options=_options)
def choice(text: str, *, options: tuple[str, ...]) -> bool:
    """One of the options appears in the response."""
    return any(option in text for option in options)


@_old("validate_highlighted_sections", "detectable_format:number_highlighted_sections", N=p.count)
def highlighted_sections(text: str, *, N: int) -> bool:
    """At least N ``*spans*`` on a line (empty ones count)."""
    return len(_HIGHLIGHT.findall(text)) >= N


@_old("validate_sections", "detectable_format:multiple_sections", N=p.count, section_splitter=p.text)
def sections(text: str, *, N: int, section_splitter: str) -> bool:
    """At least N ``<splitter> <number>`` headers, any case."""
    header = re.compile(r"\s?" + re.escape(section_splitter) + r"\s?\d+\s?", re.IGNORECASE)
    return len(header.split(text)) - 1 >= N


@_old("validate_json_format", "detectable_format:json_format")
def json_format(text: str) -> bool:
    """The whole response is JSON as is (no markdown fence allowed)."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@_old("validate_repeat_prompt", "combination:repeat_prompt", original_prompt=p.raw_text)
def repeat_prompt(text: str, *, original_prompt: str) -> bool:
    """The response starts with the request verbatim."""
    return text.startswith(original_prompt)


@_old("validate_two_responses", "combination:two_responses")
def two_responses(text: str) -> bool:
    """One ``******`` separating two different answers."""
    if text.count("******") != 1:
        return False
    first, second = text.split("******")
    return first.strip() != second.strip()


@_old("validate_uppercase", "change_case:english_capital")
def uppercase(text: str) -> bool:
    """No lower-case letter anywhere."""
    return text == text.upper()


@_old("validate_lowercase", "change_case:english_lowercase")
def lowercase(text: str) -> bool:
    """No capital letter anywhere."""
    return text == text.lower()


@_old(
    "validate_frequency_capital_words",
    "change_case:capital_word_frequency",
    N=p.count,
    quantifier=_QUANTIFIER,
)
def frequency_capital_words(text: str, *, N: int, quantifier: str) -> bool:
    """Words of ASCII capitals only, against at least / at most / around (10%) N."""
    return _meets(len(_CAPITAL_WORD.findall(text)), N, quantifier, _ten_percent)


@_old("validate_end", "startend:end_checker", end_phrase=p.raw_text)
def end(text: str, *, end_phrase: str) -> bool:
    """The response ends with the phrase exactly, nothing after it."""
    return text.endswith(end_phrase)


@_old("validate_quotation", "startend:quotation")
def quotation(text: str) -> bool:
    """The response starts and ends with a double quote."""
    return text.startswith('"') and text.endswith('"')


@_old("validate_no_commas", "punctuation:no_comma")
def no_commas(text: str) -> bool:
    """No comma: IFEval's rule exactly."""
    return instructions.no_comma(text)


_EXTRA_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {"validate_paragraphs": _paragraph_index}


def parse_old_ground_truth(ground_truth: Any) -> tuple[str, Callable[[str], bool]]:
    """The func_name and a ready ``text -> followed`` check, or ValueError for bad ground truth."""
    ground_truth = p.json_object("ifeval_old", ground_truth)
    func_name = ground_truth.get("func_name")
    function = OLD_FUNCTIONS.get(func_name) if isinstance(func_name, str) else None
    if function is None:
        raise ValueError(f"ifeval_old ground truth has unknown func_name {func_name!r}")
    arguments = {name: value for name, value in ground_truth.items() if name != "func_name"}
    checked = p.bind(func_name, function.params, arguments, _EXTRA_CHECKS.get(func_name))
    return func_name, lambda text: bool(function.check(text, **checked))


def verify_ifeval_old(response: str, ground_truth: Any, prompt: str | None = None) -> tuple[float, str | None]:
    """1.0 when the response meets the row's one constraint, else 0.0 and the function's name."""
    del prompt  # the constraint carries its own copy of the prompt where it needs one
    func_name, check = parse_old_ground_truth(ground_truth)
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    if check(response):
        return 1.0, None
    return 0.0, f"not followed: {func_name} ({OLD_FUNCTIONS[func_name].ifeval_id})"
