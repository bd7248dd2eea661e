"""The ``ifeval`` and ``ifeval_old`` verifiers: conformance with Google's reference
checker on real GPT-4 responses, offline Punkt equal to NLTK's, and one passing and
one failing response for every instruction type and every open-instruct function."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nltk
import pytest

from posttrain.verifiers.ifeval import INSTRUCTIONS, follow_instructions, verify_ifeval, verify_ifeval_old
from posttrain.verifiers.ifeval.old_format import OLD_FUNCTIONS
from posttrain.verifiers.ifeval.sentences import english_punkt_parameters, sent_tokenize, word_tokenize

CONFORMANCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "ifeval"

# sha256 of the sorted entries of NLTK's real punkt_tab/english (abbrev_types.txt,
# sent_starters.txt, collocations.tab, ortho_context.tab), taken once from a copy of
# NLTK's data as redistributed in the llama-index-core 0.14.25 wheel
# (llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/english).
NLTK_PUNKT_TAB_ENGLISH_SHA256 = "ee9ee17e35c730f70bbae0b0e4574205a3d43e36ffad6bfeffd706524b280d99"


def _read_jsonl(name: str) -> list[dict]:
    with open(CONFORMANCE / name, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def conformance_rows() -> list[dict]:
    """GPT-4's responses joined to their instructions and the reference's strict results."""
    if not CONFORMANCE.is_dir():
        pytest.skip(f"conformance data not found at {CONFORMANCE} (shared/ is not beside the project)")
    inputs = {row["prompt"]: row for row in _read_jsonl("input_data.jsonl")}
    reference = {row["key"]: row["follow_instruction_list"] for row in _read_jsonl("reference_strict.jsonl")}
    rows = []
    for answer in _read_jsonl("input_response_data_gpt4_20231107_145030.jsonl"):
        source = inputs[answer["prompt"]]
        rows.append({**source, "response": answer["response"], "reference": reference[source["key"]]})
    return rows


def _reference_is_random(instruction_id: str, kwargs: dict) -> bool:
    """The reference replaces a letter_frequency 'letter' outside a-z with a random letter
    (unseeded), so its result there is not a fact about the response."""
    letter = kwargs.get("letter", "a")
    return instruction_id == "keywords:letter_frequency" and not ("a" <= letter.lower() <= "z" and len(letter) == 1)


# ---------------------------------------------------------------- conformance


def test_conformance_matches_reference_on_every_instruction(conformance_rows):
    compared, random_in_reference, mismatches = 0, [], []
    for row in conformance_rows:
        ours = follow_instructions(row["response"], row["instruction_id_list"], row["kwargs"], row["prompt"])
        for instruction_id, kwargs, got, expected in zip(
            row["instruction_id_list"], row["kwargs"], ours, row["reference"], strict=True
        ):
            compared += 1
            if _reference_is_random(instruction_id, kwargs):
                random_in_reference.append((row["key"], kwargs["letter"], got))
            elif got != expected:
                mismatches.append((row["key"], instruction_id, kwargs, got, expected))
    assert compared == 834
    assert mismatches == []
    # The two rows ask for '#' (hashtags) and '!' and the responses have 4 and 10 of them:
    # we count the character the prompt names, where the reference drew a random letter.
    assert random_in_reference == [(1122, "#", True), (1129, "!", True)]


def test_conformance_rows_score_as_fractions(conformance_rows):
    """A benchmark row built from the files scores; a fully followed row has no reason."""
    row = next(r for r in conformance_rows if all(r["reference"]) and len(r["reference"]) > 1)
    truth = {"instruction_id_list": row["instruction_id_list"], "kwargs": row["kwargs"]}
    assert verify_ifeval(row["response"], truth) == (1.0, None)
    assert verify_ifeval(row["response"], json.dumps(truth), prompt=row["prompt"]) == (1.0, None)


# ---------------------------------------------------------------- offline Punkt


def _fingerprint(params) -> str:
    lines = (
        [f"abbrev\t{word}" for word in params.abbrev_types]
        + [f"starter\t{word}" for word in params.sent_starters]
        + [f"colloc\t{first}\t{second}" for first, second in params.collocations]
        + [f"ortho\t{word}\t{flags}" for word, flags in params.ortho_context.items() if flags]
    )
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def test_punkt_parameters_are_nltks_english_punkt_tab():
    """Zero flags mean "unseen" and are left out: NLTK's data has none."""
    assert _fingerprint(english_punkt_parameters()) == NLTK_PUNKT_TAB_ENGLISH_SHA256


def test_punkt_model_does_not_grow_with_use():
    params = english_punkt_parameters()
    before = len(params.ortho_context)
    sent_tokenize("Zyxwvut qrstuv. Plonkish wibblewords arrive. Frobnicated.")
    assert len(params.ortho_context) == before


def test_punkt_needs_no_nltk_data(monkeypatch):
    """Nothing is looked up on disk or downloaded: splitting works with no NLTK data path."""
    monkeypatch.setattr(nltk.data, "path", [])
    assert sent_tokenize("Dr. Smith arrived at 5 p.m. on Monday. He left.") == [
        "Dr. Smith arrived at 5 p.m. on Monday.",
        "He left.",
    ]


@pytest.fixture
def nltk_with_our_punkt_tab(tmp_path, monkeypatch):
    """Install our parameters as NLTK data so that NLTK's own loader and tokenizer run on them."""
    params = english_punkt_parameters()
    model = tmp_path / "tokenizers" / "punkt_tab" / "english"
    model.mkdir(parents=True)
    files = {
        "abbrev_types.txt": sorted(params.abbrev_types),
        "sent_starters.txt": sorted(params.sent_starters),
        "collocations.tab": [f"{a}\t{b}" for a, b in sorted(params.collocations)],
        "ortho_context.tab": [f"{word}\t{flags}" for word, flags in sorted(params.ortho_context.items())],
    }
    for name, lines in files.items():
        (model / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])


def test_sentences_equal_nltk_sent_tokenize_on_all_responses(conformance_rows, nltk_with_our_punkt_tab):
    responses = [row["response"] for row in conformance_rows]
    assert len(responses) == 541
    assert [len(sent_tokenize(text)) for text in responses] == [len(nltk.sent_tokenize(text)) for text in responses]
    assert [sent_tokenize(text) for text in responses] == [nltk.sent_tokenize(text) for text in responses]
    assert [word_tokenize(text) for text in responses[:100]] == [nltk.word_tokenize(text) for text in responses[:100]]


# ---------------------------------------------------------------- every instruction, by hand

ENGLISH = "The quick brown fox jumps over the lazy dog near the quiet river bank this morning."
FRENCH = "Le renard brun rapide saute par-dessus le chien paresseux près de la rivière ce matin."

# (instruction id, kwargs, a response that follows it, a response that does not)
CASES = [
    ("keywords:existence", {"keywords": ["fox", "river"]}, ENGLISH, "The dog slept."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "Cat and cat.", "A cat."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "A cat.", "Cat, cat."),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "A category error.", "My Cat sleeps."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"}, "Zzz!", "Zz"),
    ("keywords:letter_frequency", {"letter": "#", "let_frequency": 2, "let_relation": "at least"}, "#a #b", "#a"),
    ("language:response_language", {"language": "fr"}, FRENCH, ENGLISH),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "Hi there.", "A. B? C!"),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"}, "Mr. Li came. Go.", "Mr. Li came."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "One.\n***\nTwo.", "One.\n***\n***\nTwo."),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"}, "don't stop", "one two"),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
        "First part.\n\n\"Then, the end.",
        "First part.\n\nAfter that, the end.",
    ),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name] at [address]", "Dear [name]"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\n\np. s. Bye", "Hi. PS Bye"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.P.S later", "Hi.\nP.S. later"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n- two", "* one\n**bold**\n- two\n- three"),
    ("detectable_format:constrained_response", {}, "Well. My answer is no.", "My answer is: no."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*a* and **b**", "*a* and * *"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nA\nSection 2\nB", "Section 1\nA\nsection 2\nB"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{'a': 1}"),
    ("detectable_format:title", {}, "<<A Poem>>\nRoses.", "<< >>\nRoses."),
    ("combination:two_responses", {}, "Yes.\n******\nNo.", "Yes.\n******\nYes."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "say hi. Hi!", "Hi! Say hi."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, 'Done. "any other questions?"', "Any other questions? No."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "The U.S. and NASA agree.", "The US agrees."),
    ("change_case:english_capital", {}, "THIS IS ALL IN CAPITAL LETTERS AND IT IS ENGLISH TEXT.", "This is not."),
    ("change_case:english_lowercase", {}, ENGLISH.lower(), ENGLISH),
    ("punctuation:no_comma", {}, "No commas here.", "Well, no."),
    ("startend:quotation", {}, ' "Quoted." ', '"'),
]


def test_cases_cover_all_25_instruction_types():
    assert len(INSTRUCTIONS) == 25
    assert {case[0] for case in CASES} == set(INSTRUCTIONS)


@pytest.mark.parametrize(("instruction_id", "kwargs", "follows", "breaks"), CASES)
def test_instruction(instruction_id, kwargs, follows, breaks):
    assert follow_instructions(follows, [instruction_id], [kwargs]) == [True]
    assert follow_instructions(breaks, [instruction_id], [kwargs]) == [False]


def test_blank_response_follows_nothing():
    assert follow_instructions("  \n", ["punctuation:no_comma"], [{}]) == [False]


def test_score_is_fraction_and_reason_names_failures():
    truth = {"instruction_id_list": ["punctuation:no_comma", "startend:quotation"], "kwargs": [{}, None]}
    assert verify_ifeval('"Hi there."', truth) == (1.0, None)
    assert verify_ifeval("Hi there.", truth) == (0.5, "not followed: startend:quotation")


def test_none_kwargs_are_ignored_as_in_hf_ifeval():
    kwargs = {"num_bullets": 1, "keyword": None, "relation": None}
    assert verify_ifeval("* one", {"instruction_id_list": ["detectable_format:number_bullet_lists"], "kwargs": [kwargs]})[0] == 1.0


def test_language_detection_is_deterministic():
    ambiguous = "ok ok si no"
    results = {follow_instructions(ambiguous, ["language:response_language"], [{"language": "en"}])[0] for _ in range(5)}
    assert len(results) == 1


# ---------------------------------------------------------------- bad ground truth


@pytest.mark.parametrize(
    ("ground_truth", "message"),
    [
        ({"instruction_id_list": ["keywords:nope"], "kwargs": [{}]}, "unknown IFEval instruction id"),
        ({"instruction_id_list": ["keywords:frequency"], "kwargs": [{"keyword": "a"}]}, "needs argument(s)"),
        ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"N": 2}]}, "takes no argument(s)"),
        (
            {"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 3, "relation": "about"}]},
            "must be one of",
        ),
        ({"instruction_id_list": ["detectable_format:title"], "kwargs": []}, "one kwargs dict per instruction"),
        ({"instruction_id_list": [], "kwargs": []}, "non-empty 'instruction_id_list'"),
        ("{not json", "not valid JSON"),
        ([1, 2], "must be a dict"),
        (
            {"instruction_id_list": ["length_constraints:nth_paragraph_first_word"],
             "kwargs": [{"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "a"}]},
            "between 1 and num_paragraphs",
        ),
    ],
)
def test_bad_ground_truth_raises_one_line_value_error(ground_truth, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        verify_ifeval("Any response.", ground_truth)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("ground_truth", "message"),
    [
        ({"func_name": "validate_everything"}, "unknown func_name"),
        ({"func_name": "verify_keyword_frequency", "word": "a", "N": None}, "needs argument"),
        ({"func_name": "validate_lowercase", "N": 3}, "takes no argument"),
        ({"func_name": "validate_word_constraint", "N": 3, "quantifier": "exactly"}, "must be one of"),
        ({"func_name": "validate_paragraphs", "N": 2, "i": 5, "first_word": "A"}, "between 1 and N"),
        ('{"N": 3}', "unknown func_name"),
    ],
)
def test_bad_old_ground_truth_raises_value_error(ground_truth, message):
    with pytest.raises(ValueError, match=message):
        verify_ifeval_old("Any response.", ground_truth)


# ---------------------------------------------------------------- ifeval_old (Tülu 3 RLVR-IFeval)

RLVR_NULLS = dict.fromkeys(
    ["N", "quantifier", "end_phrase", "keyword_list", "word", "forbidden_words", "letter", "i", "first_word",
     "postscript_marker", "options", "section_splitter", "original_prompt"]
)

# (func_name, arguments, a response that meets the constraint, one that does not)
OLD_CASES = [
    ("verify_keywords", {"keyword_list": ["Fox", "river"]}, ENGLISH, "The dog."),
    ("verify_keyword_frequency", {"word": "cat", "N": 2}, "Cat, cat; category.", "cat cat cat"),
    ("validate_forbidden_words", {"forbidden_words": ["cat"]}, "A dog.", "A category."),
    ("verify_letter_frequency", {"letter": "a", "N": 2}, "banAna", "banana"),
    ("validate_response_language", {"language": "fr"}, FRENCH, ENGLISH),
    ("verify_paragraph_count", {"N": 2}, "One.\n  * * *  \nTwo.", "One.\n***\nTwo."),
    ("validate_word_constraint", {"N": 10, "quantifier": "around"}, " ".join(["w"] * 11), " ".join(["w"] * 12)),
    ("validate_word_constraint", {"N": 3, "quantifier": "at most"}, "one two three", "one two three four"),
    ("verify_sentence_constraint", {"N": 2, "quantifier": "at least"}, "Mr. Li came. He left.", "Mr. Li came."),
    ("validate_paragraphs", {"N": 2, "i": 2, "first_word": "Then"}, "A.\n\nThen B.", "A.\n\nthen B."),
    ("verify_postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. bye", "Hi.\nP.S."),
    ("validate_placeholders", {"N": 1}, "Dear [name]", "Dear you"),
    ("verify_bullet_points", {"N": 2}, "* a\n - b", "* a\n- b\n**c**"),
    ("validate_title", {}, "<<Title>> text", "<Title> text"),
    ("validate_choice", {"options": "('My answer is yes.', 'My answer is no.')"}, "My answer is no.", "Maybe."),
    ("validate_choice", {"options": ["A)", "B)"]}, "B)", "C)"),
    ("validate_highlighted_sections", {"N": 2}, "*a* and *b*", "*a* and b"),
    ("validate_sections", {"N": 2, "section_splitter": "Section"}, "SECTION 1 a section 2 b", "Section 1 only"),
    ("validate_json_format", {}, '{"a": [1, 2]}', '```json\n{"a": 1}\n```'),
    ("validate_repeat_prompt", {"original_prompt": "Say hi."}, "Say hi. Hi!", "say hi. Hi!"),
    ("validate_two_responses", {}, "Yes.\n******\nNo.", "Yes.\n******\nNo.\n******\nMaybe."),
    ("validate_uppercase", {}, "ALL CAPS 123!", "ALL CAPs"),
    ("validate_lowercase", {}, "all lower 123!", "all Lower"),
    ("validate_frequency_capital_words", {"N": 2, "quantifier": "at least"}, "NASA and ESA", "NASA and Esa"),
    ("validate_end", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", "Done. Any other questions? "),
    ("validate_quotation", {}, '"Quoted."', '"Quoted." '),
    ("validate_no_commas", {}, "No commas.", "Yes, commas."),
]


def test_old_cases_cover_every_function_and_map_to_ifeval_ids():
    assert {case[0] for case in OLD_CASES} == set(OLD_FUNCTIONS)
    assert {function.ifeval_id for function in OLD_FUNCTIONS.values()} == set(INSTRUCTIONS)


@pytest.mark.parametrize(("func_name", "arguments", "meets", "misses"), OLD_CASES)
def test_old_function(func_name, arguments, meets, misses):
    ground_truth = json.dumps({**RLVR_NULLS, "func_name": func_name, **arguments})
    assert verify_ifeval_old(meets, ground_truth) == (1.0, None)
    score, reason = verify_ifeval_old(misses, ground_truth)
    assert score == 0.0
    assert reason == f"not followed: {func_name} ({OLD_FUNCTIONS[func_name].ifeval_id})"
