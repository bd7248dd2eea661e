"""Rollout correction (truncated importance weights, token and sequence masking) and the
mismatch statistics, by hand."""

import math

import pytest
import torch

from posttrain.rl.correction import rollout_correction

# Row 0: rho = (3, 0.25, 1.5 | pad); row 1: rho = (3, 3 | pad, pad)
RHO = [[3.0, 0.25, 1.5, 1.0], [3.0, 3.0, 1.0, 1.0]]
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
ENGINE = torch.full((2, 4), -2.0)
TRAINER = ENGINE + torch.tensor(RHO).log()


def test_tis_weights_by_hand():
    c = rollout_correction(TRAINER, ENGINE, MASK, "tis", cap=2.0)
    # min(rho, 2): (2, 0.25, 1.5), (2, 2); padding 0; the mask is unchanged
    assert torch.allclose(c.weights, torch.tensor([[2.0, 0.25, 1.5, 0.0], [2.0, 2.0, 0.0, 0.0]]), atol=1e-6)
    assert torch.equal(c.mask, MASK)
    assert c.metrics.compute()["mismatch/corrected_frac"] == pytest.approx(3 / 5)  # 3 of 5 tokens capped


def test_mask_token_by_hand():
    c = rollout_correction(TRAINER, ENGINE, MASK, "mask_token", cap=2.0)
    # keep rho in [0.5, 2]: only 1.5
    assert c.mask.tolist() == [[False, False, True, False], [False, False, False, False]]
    assert c.weights.tolist() == [[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    assert c.metrics.compute()["mismatch/corrected_frac"] == pytest.approx(4 / 5)


def test_mask_sequence_by_hand():
    c = rollout_correction(TRAINER, ENGINE, MASK, "mask_sequence", cap=2.0)
    # row 0: geometric mean (3 * 0.25 * 1.5)^(1/3) = 1.125^(1/3) = 1.04 -> kept
    # row 1: (3 * 3)^(1/2) = 3 -> masked
    assert c.mask.tolist() == [[True, True, True, False], [False, False, False, False]]
    assert c.metrics.compute()["mismatch/corrected_frac"] == 0.5
    # product ratio: row 0 is 1.125 (kept), row 1 is 9 (masked)
    c = rollout_correction(TRAINER, ENGINE, MASK, "mask_sequence", cap=2.0, sequence_ratio="product")
    assert c.mask[:, 0].tolist() == [True, False]


def test_mismatch_statistics_by_hand():
    m = rollout_correction(TRAINER[:1], ENGINE[:1], MASK[:1], "none").metrics.compute()
    # k1 = mean(-log rho) = -ln(1.125) / 3 = -0.039261
    assert m["mismatch/k1"] == pytest.approx(-math.log(1.125) / 3, abs=1e-6)
    # k3 = mean(rho - 1 - ln rho) = (0.901388 + 0.636294 + 0.094535) / 3 = 0.544072
    assert m["mismatch/k3"] == pytest.approx(0.544072, abs=1e-5)
    assert m["mismatch/ratio_mean"] == pytest.approx(4.75 / 3, abs=1e-5)
    assert (m["mismatch/ratio_max"], m["mismatch/ratio_min"]) == (pytest.approx(3.0), pytest.approx(0.25))
    assert m["mismatch/abs_diff_max"] == pytest.approx(math.log(4), abs=1e-6)
    assert m["mismatch/corrected_frac"] == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="same shape"):
        rollout_correction(TRAINER, ENGINE, MASK[:1])
    with pytest.raises(ValueError, match="cap must be > 1"):
        rollout_correction(TRAINER, ENGINE, MASK, "tis", cap=1.0)
    with pytest.raises(ValueError, match="must be none, tis"):
        rollout_correction(TRAINER, ENGINE, MASK, "truncate")
