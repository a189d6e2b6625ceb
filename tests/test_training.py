"""The interpretable-gradient regulariser against a hand-computed case and finite differences;
every ReLU spelling; the model left as one plain step leaves it; mistakes refused."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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




class Functional(nn.Module):
    """tiny() with its ReLU written as ``relu`` (a function of the hidden activations)."""

    def __init__(self, relu) -> None:
        super().__init__()
        self.net, self.relu = tiny(), relu

    def forward(self, x):
        return self.net[2](self.relu(self.net[0](x)))


def _in_place(x):
    x.relu_()
    return x


@pytest.mark.parametrize("relu", [
    F.relu, torch.relu, torch.Tensor.relu, lambda x: F.relu(x, inplace=True), _in_place,
    lambda x: torch.relu_(x), nn.ReLU(inplace=True), nn.ReLU6(), F.relu6,
    lambda x: F.hardtanh(x, 0.0, 6.0)],
    ids=["F.relu", "torch.relu", "Tensor.relu", "F.relu-inplace", "relu_-method", "torch.relu_",
         "nn.ReLU-inplace", "nn.ReLU6", "F.relu6", "hardtanh-0-6"])
def test_every_relu_spelling_takes_the_guided_rule(relu):
    """The hand-computed case of test_hand_computed_case with the ReLU spelled otherwise."""
    x, t = torch.tensor([[1.0, 2.0]], dtype=torch.float64), torch.tensor([0])
    loss_fn = InterpretableGradientLoss(Functional(relu), weight=0.1)
    loss_fn(x, t)
    assert loss_fn.last["regulariser"] == pytest.approx(1 + 5 / math.sqrt(34), rel=1e-12)


class BatchNormDropout(nn.Module):
    def __init__(self, momentum: float | None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4, momentum=momentum)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.head(self.drop(F.relu(self.bn(self.conv(x)))).flatten(1))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("subset", [None, 2])
def test_the_model_is_left_as_one_plain_step_leaves_it(momentum, subset):
    """Three steps (loss, backward): BatchNorm's running statistics and num_batches_tracked,
    the random generator (dropout) and the classification term are bit for bit those of
    ``F.cross_entropy(model(x), t)``."""
    torch.manual_seed(0)
    model = BatchNormDropout(momentum).train()
    plain = copy.deepcopy(model)
    loss_fn = InterpretableGradientLoss(model, subset=subset)
    for _ in range(3):
        x, t = torch.randn(6, 3, 6, 6), torch.tensor([0, 1, 2, 0, 1, 2])
        state = torch.get_rng_state()
        loss_fn(x, t).backward()
        after = torch.get_rng_state()
        torch.set_rng_state(state)
        classification = F.cross_entropy(plain(x), t)
        assert torch.equal(after, torch.get_rng_state())
        assert loss_fn.last["classification"] == classification.item()
        assert loss_fn.last["regulariser"] > 0
    for name, buffer in plain.named_buffers():
        assert torch.equal(model.get_buffer(name), buffer), name
    assert model.bn.num_batches_tracked.item() == 3


def test_evaluation_batch_of_one_and_grad_free_calls():
    """A model in eval mode, a batch of one, under no_grad: the same value, no graph."""
    model = BatchNormDropout(0.1).eval()
    x, t = torch.randn(1, 3, 6, 6), torch.tensor([2])
    loss_fn = InterpretableGradientLoss(model)
    value = loss_fn(x, t)
    with torch.no_grad():
        quiet = loss_fn(x, t)
    assert value.requires_grad and not quiet.requires_grad
    assert quiet.item() == value.item()


def _gelu_only():
    return nn.Sequential(nn.BatchNorm1d(2), nn.Dropout(0.5), nn.Linear(2, 2), nn.GELU(),
                         nn.Linear(2, 2)).double()


def _functional_silu():
    return Functional(F.silu)


X, T = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64), torch.tensor([0, 1])


@pytest.mark.parametrize("options, x, t, error, fix", [
    ({"subset": 0}, X, T, ValueError, "subset must be None"),
    ({"subset": -2}, X, T, ValueError, "subset must be None"),
    ({"subset": 2.5}, X, T, ValueError, "subset must be None"),
    ({"subset": True}, X, T, ValueError, "subset must be None"),
    ({"weight": -1.0}, X, T, ValueError, "weight must be a finite number >= 0"),
    ({"weight": float("nan")}, X, T, ValueError, "weight must be a finite number >= 0"),
    ({"weight": "0.1"}, X, T, ValueError, "weight must be a finite number >= 0"),
    ({"distance": "euclid"}, X, T, ValueError, "distance must be one of"),
    ({"distance": None}, X, T, ValueError, "distance must be one of"),
    ({"model": _gelu_only}, X, T, ValueError, "use ReLU activations"),
    ({"model": _functional_silu}, X, T, ValueError, "use ReLU activations"),
    ({"model": lambda: nn.Sequential(nn.Linear(2, 2), nn.Tanh()).double()}, X, T, ValueError,
     "use ReLU activations"),
    ({"model": lambda: "resnet18"}, X, T, TypeError, "must be an nn.Module"),
    ({}, X.long(), T, TypeError, "x.float()"),
    ({}, X.tolist(), T, TypeError, "torch.as_tensor"),
    ({}, X[:0], T[:0], ValueError, "non-empty batch"),
    ({}, X[0], T, ValueError, "x.unsqueeze(0)"),
    ({}, X.where(X != 2, float("nan")), T, ValueError, "drop or repair"),
    ({}, X.where(X != 2, float("inf")), T, ValueError, "drop or repair"),
    ({}, X.float(), T, ValueError, "x.to(torch.float64)"),
    ({}, X, T.float(), TypeError, "target.argmax(1)"),
    ({}, X, torch.tensor([True, False]), TypeError, "class indices"),
    ({}, X, torch.tensor([[0.2, 0.8], [1.0, 0.0]]), TypeError, "target.argmax(1)"),
    ({}, X, [0, 1], TypeError, "torch.tensor(target)"),
    ({}, X, np.array([0, 1]), TypeError, "torch.tensor(target)"),
    ({}, X, torch.tensor([0, 1, 1]), ValueError, "one class per image"),
    ({}, X, torch.tensor(0), ValueError, "one class per image"),
    ({}, X, torch.tensor([0, 2]), ValueError, "out of range"),
    ({}, X, torch.tensor([-1, 0]), ValueError, "out of range"),
])
def test_mistakes_are_refused_naming_the_fix_before_any_work(options, x, t, error, fix):
    """Each mistake: the error type, its fix named, and the model and the generator untouched
    (checked before any work, or put back where only the forward pass can tell)."""
    options = dict(options)
    model = options.pop("model", lambda: BatchNormTiny())()
    buffers = [b.clone() for b in model.buffers()] if isinstance(model, nn.Module) else []
    state = torch.get_rng_state()
    with pytest.raises(error, match=re.escape(fix)):
        InterpretableGradientLoss(model, **options)(x, t)
    assert torch.equal(state, torch.get_rng_state())
    if buffers:
        assert all(torch.equal(a, b) for a, b in zip(model.buffers(), buffers, strict=True))


class BatchNormTiny(nn.Module):
    """tiny() behind a BatchNorm and a dropout (to see that a refusal changes nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn, self.drop, self.net = nn.BatchNorm1d(2).double(), nn.Dropout(0.5), tiny()

    def forward(self, x):
        return self.net(self.drop(self.bn(x)))


def test_inference_mode_is_refused():
    with torch.inference_mode(), pytest.raises(ValueError, match="outside torch.inference_mode"):
        InterpretableGradientLoss(tiny())(X, T)
