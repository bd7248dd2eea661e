"""nonfinite_flag: the one check every optimizer step runs, on hand-made gradients."""

import math

import pytest
import torch

from posttrain.training.guards import nonfinite_flag


def _params(*grads):
    out = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g
        out.append(p)
    return out


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_one_bad_entry_anywhere_flags_the_step(bad):
    g = torch.ones(4, 3)
    g[2, 1] = bad
    assert nonfinite_flag(torch.tensor(1.0), _params(torch.ones(5), g)).item() == 1


def test_large_finite_gradients_and_empty_ones_pass():
    # 3e38 squared would overflow a 2-norm; the check must not call that non-finite.
    params = _params(torch.full((3,), 3e38), torch.empty(0), torch.tensor([-2.0]))
    params.append(torch.nn.Parameter(torch.zeros(2)))  # no gradient at all
    assert nonfinite_flag(torch.tensor(0.5), params).item() == 0


def test_a_nonfinite_loss_flags_the_step_even_without_gradients():
    assert nonfinite_flag(torch.tensor(math.nan), []).item() == 1
    assert nonfinite_flag(torch.tensor(2.0), []).item() == 0
