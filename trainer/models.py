"""Models of the training experiments, registered by name (the torchvision registry's shape).

``simple_cnn`` is the study's ablation subject: ``conv_layers`` 3×3 convolutions (each optionally
followed by ReLU), one max-pool, then ``linear_layers`` fully connected layers (each but the last
optionally followed by ReLU). ``dense_linear`` and ``dense_poly`` are the dense baselines: a single
linear map of the pixels, and the same on the pixels plus their squares (a degree-2 polynomial
without cross terms).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trainer.errors import TrainerError

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}


def register(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def wrap(builder: ModelBuilder) -> ModelBuilder:
        _REGISTRY[name] = builder
        return builder

    return wrap


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def build_model(
    name: str, *, input_shape: tuple[int, int, int], num_classes: int, **params: Any
) -> nn.Module:
    """Build a registered model for inputs of ``input_shape`` (C, H, W); unknown names are an error."""
    if name not in _REGISTRY:
        raise TrainerError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")
    try:
        return _REGISTRY[name](input_shape=input_shape, num_classes=num_classes, **params)
    except TypeError as exc:  # an unknown parameter name
        raise TrainerError(f"bad parameters for model {name!r}: {exc}") from exc


@register("simple_cnn")
def simple_cnn(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    conv_layers: int = 1,
    linear_layers: int = 3,
    activation: bool = True,
    channels: int = 32,
    hidden: int = 128,
) -> nn.Module:
    if conv_layers < 1 or linear_layers < 1:
        raise TrainerError(
            f"simple_cnn needs at least one conv and one linear layer, got {conv_layers} and {linear_layers}"
        )
    in_channels, height, width = input_shape
    layers: list[nn.Module] = []
    for i in range(conv_layers):
        layers.append(nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1))
        if activation:
            layers.append(nn.ReLU())
    layers += [nn.MaxPool2d(2), nn.Flatten()]
    features = channels * (height // 2) * (width // 2)
    for i in range(linear_layers):
        last = i == linear_layers - 1
        layers.append(nn.Linear(features if i == 0 else hidden, num_classes if last else hidden))
        if activation and not last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@register("dense_linear")
def dense_linear(*, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))


class _Squares(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x * x], dim=1)


@register("dense_poly")
def dense_poly(*, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), _Squares(), nn.Linear(2 * c * h * w, num_classes))


def count_layers(model: nn.Module) -> dict[str, int]:
    """Conv, linear and ReLU layer counts (what the ablation varies)."""
    modules = list(model.modules())
    return {
        "conv": sum(isinstance(m, nn.Conv2d) for m in modules),
        "linear": sum(isinstance(m, nn.Linear) for m in modules),
        "relu": sum(isinstance(m, nn.ReLU) for m in modules),
    }
