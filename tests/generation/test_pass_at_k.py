"""pass@k (the unbiased estimator of Chen et al. 2021) and the per-verifier summary,
against values worked out by hand."""

import pytest

from posttrain.generation import pass_at_k, pass_rates


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 2 / 5),          # 1 - C(3,1)/C(5,1) = 1 - 3/5: pass@1 is the pass rate c/n
    (5, 2, 2, 0.7),            # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 2, 4, 1.0),            # n - c = 3 < 4: every 4 of the 5 hold a passing one
    (8, 1, 4, 0.5),            # 1 - C(7,4)/C(8,4) = 1 - 35/70
    (8, 1, 8, 1.0),            # all 8 drawn
    (10, 3, 5, 11 / 12),       # 1 - C(7,5)/C(10,5) = 1 - 21/252
    (4, 0, 2, 0.0),            # nothing passes
    (4, 4, 1, 1.0),
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_large_n_does_not_overflow():
    # 1 - C(1000-1, 500)/C(1000, 500) = 1 - (1000-500)/1000 = 0.5 (one passing sample)
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_rates_overall_and_per_verifier():
    groups = [
        (["gsm8k"], [1.0, 0.0, 0.0, 1.0]),          # c = 2 of 4
        (["gsm8k", "f1"], [0.0, 0.0, 0.0, 0.0]),    # c = 0, counts toward both verifiers
        (["f1"], [1.0, 1.0, 1.0, 0.5]),             # c = 3 (0.5 is below the threshold 1)
    ]
    s = pass_rates(groups, [1, 4])
    # mean score (2 + 0 + 3.5) / 12; pass@1 mean of 2/4, 0, 3/4; pass@4: 1, 0, 1 (n - c < 4)
    assert s["prompts"] == 3 and s["samples"] == 12
    assert s["mean_score"] == pytest.approx(5.5 / 12, abs=1e-6)
    assert s["pass@1"] == pytest.approx(1.25 / 3, abs=1e-6)
    assert s["pass@4"] == pytest.approx(2 / 3, abs=1e-6)
    g, f = s["per_verifier"]["gsm8k"], s["per_verifier"]["f1"]
    assert (g["prompts"], g["samples"]) == (2, 8)
    assert g["mean_score"] == 0.25 and g["pass@1"] == 0.25 and g["pass@4"] == 0.5  # (0.5 + 0) / 2, (1 + 0) / 2
    assert f["mean_score"] == pytest.approx(3.5 / 8) and f["pass@1"] == 0.375 and f["pass@4"] == 0.5
    # With threshold 0.5 the last prompt's 0.5 passes too: f1 pass@1 = (0 + 4/4) / 2
    assert pass_rates(groups, [1], threshold=0.5)["per_verifier"]["f1"]["pass@1"] == 0.5
    # k above a prompt's sample count is left out rather than made up
    assert "pass@8" not in pass_rates(groups, [1, 8])
