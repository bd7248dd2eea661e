"""Preference data: both row formats, bad rows reported and dropped, truncation, one
padded forward for chosen and rejected that matches scoring each response alone."""

import json

import pytest
import torch

from posttrain.data.preference import (
    PreferencePair, build_preference_pairs, collate_pairs, fit_pair, report_metrics, tokenize_pairs,
)
from posttrain.data.reference_cache import pair_logps, score_pairs
from posttrain.policy import Policy
from posttrain.recipe.schema import DataSource


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return Policy.load(tiny_model_dir, device="cpu")


def _u(t):
    return {"role": "user", "content": t}


def _a(t):
    return {"role": "assistant", "content": t}


GOOD = {"chosen": [_u("What is 2 + 3?"), _a("2 + 3 = 5. The answer is 5.")],
        "rejected": [_u("What is 2 + 3?"), _a("The answer is 6.")]}


def test_both_formats_give_the_same_tokens(policy):
    tok = policy.tokenizer
    rows = [GOOD,
            {"prompt": "What is 2 + 3?", "chosen": "2 + 3 = 5. The answer is 5.", "rejected": "The answer is 6."},
            {"prompt": [_u("What is 2 + 3?")], "chosen": [_a("2 + 3 = 5. The answer is 5.")],
             "rejected": [_a("The answer is 6.")]}]
    pairs, report = tokenize_pairs(tok, rows, max_length=512)
    assert report.kept == 3 and not report.dropped
    assert pairs[0] == pairs[1] == pairs[2]
    p = pairs[0]
    assert p.prompt == policy.chat_ids([_u("What is 2 + 3?")], add_generation_prompt=True)
    assert p.chosen == tok("2 + 3 = 5. The answer is 5.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert p.rejected[-1] == tok.eos_token_id


def test_bad_rows_are_reported_and_dropped(policy):
    rows = [GOOD,
            {"chosen": [_u("What is 2 + 3?"), _a("5")], "rejected": [_u("What is 2 + 4?"), _a("6")]},
            {"chosen": [], "rejected": [_u("hi"), _a("x")]},
            {"prompt": "hi", "chosen": "", "rejected": "x"},
            {"chosen": [_u("a"), _a("   ")], "rejected": [_u("a"), _a("b")]},
            {"chosen": [_u("q"), _u("not an answer")], "rejected": [_u("q"), _a("b")]},
            GOOD]
    pairs, report = tokenize_pairs(policy.tokenizer, rows, max_length=512, first_index=10)
    assert report.kept == 2 and len(pairs) == 2 and report.rows == 7
    assert report.dropped["prompts differ"] == [11]
    assert report.dropped["empty chosen or rejected"] == [12, 13]
    assert report.dropped["empty or malformed message"] == [14]
    assert report.dropped["reply is not an assistant turn"] == [15]
    m = report.metrics("data/train")
    assert m["data/train/dropped"] == 5 and m["data/train/dropped/prompts_differ/first_rows"] == "11"


def test_truncation_cuts_prompt_from_the_left_then_responses():
    pair = PreferencePair(list(range(100, 140)), [1, 2, 3, 4, 5], [6, 7])
    cut, truncated = fit_pair(pair, 30, "prompt_left")
    assert truncated and cut.prompt == list(range(115, 140)) and cut.chosen == pair.chosen
    cut, _ = fit_pair(PreferencePair(list(range(100, 140)), list(range(30)), [6, 7]), 30, "prompt_left")
    assert cut.prompt == list(range(125, 140)) and cut.chosen == list(range(15)) and cut.rejected == [6, 7]
    assert fit_pair(pair, 30, "drop") == (None, False)
    assert fit_pair(pair, 45, "drop") == (pair, False)


def test_collate_shares_prompt_and_common_response_start():
    pairs = [PreferencePair([1, 2], [3, 4, 5], [3, 6]), PreferencePair([7], [8], [9, 10])]
    b = collate_pairs(pairs, pad_id=0)
    # pair 0: prompt 1 2, shared 3, chosen rest 4 5, rejected rest 6
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 1, 2, 0, 1]]
    allow = b["attention_mask"][0, 0].int().tolist()
    assert allow[5] == [1, 1, 1, 0, 0, 1]  # rejected's 6 sees prompt, shared 3, itself; not chosen's 4 5
    assert allow[4] == [1, 1, 1, 1, 1, 0]
    assert b["attention_mask"][1, 0, 4].int().tolist() == [0, 0, 0, 0, 1, 0]  # a pad sees itself only
    got = sorted(zip(b["score_out"].tolist(), b["score_row"].tolist(), b["score_pos"].tolist(),
                     b["score_target"].tolist()))
    assert got == sorted([(0, 0, 1, 3), (0, 0, 2, 4), (0, 0, 3, 5), (2, 0, 1, 3), (2, 0, 2, 6),
                          (1, 1, 0, 8), (3, 1, 0, 9), (3, 1, 2, 10)])
    assert b["chosen_tokens"].tolist() == [3, 1] and b["rejected_tokens"].tolist() == [2, 2]


def test_one_forward_matches_scoring_each_response_alone(policy):
    rows = [GOOD, {"prompt": "Compute 41 minus 7.", "chosen": "41 - 7 = 34. The answer is 34.", "rejected": "35"},
            {"prompt": [{"role": "system", "content": "Be short."}, _u("Hello there")], "chosen": "Hi!",
             "rejected": "Hello, how are you doing today? Fine, thanks."}]
    pairs, _ = tokenize_pairs(policy.tokenizer, rows, max_length=512)
    batch = collate_pairs(pairs, policy.tokenizer.pad_token_id)
    with torch.no_grad():
        got = pair_logps(policy.model, batch)
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    want = torch.stack([lp.sum() for lp in policy.response_logprobs(prompts, responses, batch_size=1)])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(pair_logps(policy.model, batch, generic=True), want, atol=1e-4, rtol=1e-5)
    c, r = score_pairs(policy.model, pairs, policy.tokenizer.pad_token_id, "cpu", max_tokens=80, progress=False)
    torch.testing.assert_close(torch.cat([c, r]), want, atol=1e-4, rtol=1e-5)


def test_sources_report_file_rows_and_cache(policy, tmp_path):
    f = tmp_path / "prefs.jsonl"
    bad = {"chosen": [_u("x"), _a("1")], "rejected": [_u("y"), _a("2")]}
    f.write_text("\n".join(json.dumps(r) for r in [GOOD, bad, GOOD, GOOD]) + "\n")
    src = [DataSource(path=str(f))]
    pairs, stats = build_preference_pairs(src, policy.tokenizer, 512, cache_dir=tmp_path / "c")
    assert len(pairs) == 3 and not stats["cache_hit"]
    m = report_metrics(stats, "data/train")
    assert m["data/train/dropped"] == 1 and m["data/train/dropped/prompts_differ/first_rows"] == "prefs.jsonl:1"
    again, stats2 = build_preference_pairs(src, policy.tokenizer, 512, cache_dir=tmp_path / "c")
    assert stats2["cache_hit"] and again == pairs and report_metrics(stats2, "x")["x/dropped"] == 1
