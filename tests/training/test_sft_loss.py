import math

import torch

from posttrain.losses.sft import sft_loss


def test_loss_matches_hand_computed_values():
    # vocab of 2; position t predicts label t+1
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[-100, 0, 1]])
    loss_sum, n = sft_loss(logits, labels)
    # p(0 | pos 0) = 1/(1+3) -> ln 4; p(1 | pos 1) = 1/2 -> ln 2; the last logits predict nothing
    assert n.item() == 2
    assert math.isclose(loss_sum.item(), math.log(4) + math.log(2), rel_tol=1e-6)


def test_masked_positions_and_padding_do_not_count():
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.3, 0.0, 0.0], [0.0, 0.0, 0.0], [9.0, 9.0, 9.0]]])
    labels = torch.tensor([[-100, 2, -100, -100]])
    loss_sum, n = sft_loss(logits, labels)
    expected = -torch.log_softmax(torch.tensor([1.0, 2.0, 0.5]), -1)[2]
    assert n.item() == 1
    assert math.isclose(loss_sum.item(), expected.item(), rel_tol=1e-6)


def test_all_masked_gives_zero_sum_and_zero_count():
    loss_sum, n = sft_loss(torch.randn(2, 4, 5, requires_grad=True), torch.full((2, 4), -100))
    assert loss_sum.item() == 0.0 and n.item() == 0


def test_loss_is_differentiable_sum_over_rows():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, :2] = -100
    total, n = sft_loss(logits, labels)
    a, na = sft_loss(logits[:1], labels[:1])
    b, nb = sft_loss(logits[1:], labels[1:])
    assert n == na + nb
    torch.testing.assert_close(total, a + b)
    total.backward()
    assert logits.grad[0, 0].abs().sum() == 0  # predicts label 1, which is masked
