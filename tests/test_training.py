"""The interpretable-gradient regulariser against a hand-computed case and finite differences."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from captum_fgcam.training import InterpretableGradientLoss


def tiny() -> nn.Sequential:
    """x (2) -> Linear W1 -> ReLU -> Linear W2 -> 2 logits, float64, no biases."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 1.0]]))
        model[2].weight.copy_(torch.tensor([[1.0, -3.0], [0.5, 2.0]]))
    return model.double()


def test_hand_computed_case():
    """x = (1, 2): hidden (1, 4), both open; logits (-11, 8.5); target 0.
    Standard input gradient W1^T (1, -3) = (-5, -3); guided: the -3 is blocked at the ReLU,
    W1^T (1, 0) = (1, 0); cosine distance 1 + 5 / sqrt(34)."""
    model = tiny()
    x, t = torch.tensor([[1.0, 2.0]], dtype=torch.float64), torch.tensor([0])
    loss = InterpretableGradientLoss(model, weight=0.1)(x, t)
    ce = math.log(math.exp(-11) + math.exp(8.5)) + 11
    distance = 1 + 5 / math.sqrt(34)
    assert loss.item() == pytest.approx(ce + 0.1 * distance, rel=1e-12)
    for kind, want in [("l1", (6 + 3) / 2), ("mse", (36 + 9) / 2)]:
        assert InterpretableGradientLoss(model, weight=1.0, distance=kind)(x, t).item() == \
            pytest.approx(ce + want, rel=1e-12)


def test_the_regulariser_trains_through_the_standard_gradient():
    """d L / d W by autograd (double backpropagation) equals central finite differences."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(),
                          nn.Linear(4, 3)).double()
    x, t = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    loss_fn = InterpretableGradientLoss(model, weight=0.5)
    (grad,) = torch.autograd.grad(loss_fn(x, t), [model[2].weight])
    numeric = torch.zeros_like(grad)
    with torch.no_grad():
        for i in range(grad.shape[0]):
            for j in range(grad.shape[1]):
                w = model[2].weight
                w[i, j] += 1e-6
                up = loss_fn(x, t).item()
                w[i, j] -= 2e-6
                down = loss_fn(x, t).item()
                w[i, j] += 1e-6
                numeric[i, j] = (up - down) / 2e-6
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-7)
    assert loss_fn.last["regulariser"] > 0


def test_refusals():
    with pytest.raises(ValueError, match="nn.ReLU"):
        InterpretableGradientLoss(nn.Sequential(nn.Linear(2, 2), nn.Tanh()))
    with pytest.raises(ValueError, match="distance"):
        InterpretableGradientLoss(tiny(), distance="euclid")


def test_dropout_draws_one_mask_for_both_halves():
    """With dropout active the standard and guided gradients still come from one network:
    on a ReLU-free path (all hidden units open, positive head weights) they are equal."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 2)).double()
    with torch.no_grad():
        model[0].weight.abs_()
        model[0].bias.fill_(1.0)
        model[3].weight.abs_()
    x, t = torch.rand(4, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1])
    loss_fn = InterpretableGradientLoss(model.train(), weight=1.0)
    loss_fn(x, t)
    assert loss_fn.last["regulariser"] == pytest.approx(0.0, abs=1e-12)


def test_batchnorm_statistics_come_from_the_classification_pass_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3)).train()
    plain = copy.deepcopy(model)
    x, t = torch.randn(6, 3, 6, 6), torch.tensor([0, 1, 2, 0, 1, 2])
    InterpretableGradientLoss(model, subset=2)(x, t)
    plain(x)
    torch.testing.assert_close(model[1].running_mean, plain[1].running_mean)
    torch.testing.assert_close(model[1].running_var, plain[1].running_var)
    assert model[1].momentum == 0.1
