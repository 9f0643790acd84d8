"""The model registry: the ablation grid's layer counts, forward shapes, errors for bad names or params."""

from __future__ import annotations

import itertools

import pytest
import torch

from trainer.errors import TrainerError
from trainer.models import build_model, count_layers, model_names

DIGITS_SHAPE = (1, 8, 8)
CIFAR_SHAPE = (3, 32, 32)


def test_registry_names() -> None:
    assert {"simple_cnn", "dense_linear", "dense_poly"} <= set(model_names())


@pytest.mark.parametrize(
    ("conv_layers", "linear_layers", "activation"), list(itertools.product([1, 4], [3, 7], [True, False]))
)
@pytest.mark.parametrize("input_shape", [DIGITS_SHAPE, CIFAR_SHAPE], ids=["digits", "cifar"])
def test_simple_cnn_grid(
    conv_layers: int, linear_layers: int, activation: bool, input_shape: tuple[int, int, int]
) -> None:
    model = build_model(
        "simple_cnn",
        input_shape=input_shape,
        num_classes=10,
        conv_layers=conv_layers,
        linear_layers=linear_layers,
        activation=activation,
        channels=8,
        hidden=16,
    )
    # One ReLU after every conv and after every linear layer but the output layer.
    relus = conv_layers + linear_layers - 1 if activation else 0
    assert count_layers(model) == {"conv": conv_layers, "linear": linear_layers, "relu": relus}
    with torch.inference_mode():
        out = model(torch.rand(2, *input_shape))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_simple_cnn_defaults() -> None:
    model = build_model("simple_cnn", input_shape=DIGITS_SHAPE, num_classes=10)
    assert count_layers(model) == {"conv": 1, "linear": 3, "relu": 3}


@pytest.mark.parametrize("input_shape", [DIGITS_SHAPE, CIFAR_SHAPE], ids=["digits", "cifar"])
def test_dense_linear(input_shape: tuple[int, int, int]) -> None:
    model = build_model("dense_linear", input_shape=input_shape, num_classes=7)
    c, h, w = input_shape
    (linear,) = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert (linear.in_features, linear.out_features) == (c * h * w, 7)
    assert count_layers(model) == {"conv": 0, "linear": 1, "relu": 0}
    assert model(torch.rand(3, *input_shape)).shape == (3, 7)


@pytest.mark.parametrize("input_shape", [DIGITS_SHAPE, CIFAR_SHAPE], ids=["digits", "cifar"])
def test_dense_poly(input_shape: tuple[int, int, int]) -> None:
    model = build_model("dense_poly", input_shape=input_shape, num_classes=10)
    c, h, w = input_shape
    (linear,) = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert (linear.in_features, linear.out_features) == (2 * c * h * w, 10)
    assert model(torch.rand(3, *input_shape)).shape == (3, 10)


def test_dense_poly_adds_the_squares() -> None:
    """Pixels and their squares: with weights (0 for x, 1 for x²) on one output, it computes Σx²."""
    model = build_model("dense_poly", input_shape=(1, 2, 2), num_classes=1)
    (linear,) = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.0] * 4 + [1.0] * 4]))
        linear.bias.zero_()
        x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
        assert model(x).item() == pytest.approx(30.0)


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(TrainerError, match=r"unknown model 'resnet9'.*simple_cnn"):
        build_model("resnet9", input_shape=DIGITS_SHAPE, num_classes=10)


@pytest.mark.parametrize("name", ["simple_cnn", "dense_linear", "dense_poly"])
def test_unknown_parameter(name: str) -> None:
    with pytest.raises(TrainerError, match=rf"bad parameters for model '{name}'.*depth"):
        build_model(name, input_shape=DIGITS_SHAPE, num_classes=10, depth=3)


@pytest.mark.parametrize(("conv_layers", "linear_layers"), [(0, 3), (1, 0), (-1, 1)])
def test_simple_cnn_needs_a_conv_and_a_linear_layer(conv_layers: int, linear_layers: int) -> None:
    with pytest.raises(TrainerError, match="at least one conv and one linear layer"):
        build_model(
            "simple_cnn",
            input_shape=DIGITS_SHAPE,
            num_classes=10,
            conv_layers=conv_layers,
            linear_layers=linear_layers,
        )
