"""The model zoo's catalogue: a decade of torchvision classification networks, with their papers.

Data, not code: one :class:`ZooModel` per architecture. ``year`` and ``paper`` are ours — the year
the architecture's paper first appeared (its arXiv version where there is one; AlexNet's NIPS
paper had none). Accuracy, GFLOPS, parameters and resolution are copied from torchvision's weight
metadata (``get_model_weights(name).DEFAULT``: ``meta['_metrics']['ImageNet-1K']['acc@1']``,
``meta['_ops']``, ``meta['num_params']``, and the crop size of ``DEFAULT.transforms``) rather than
read at run time, so the table can be read, reviewed and estimated from without torchvision, and
the tests check every value against torchvision's (tests/studies/test_zoo.py): a torchvision
release that changes a DEFAULT weight set fails there, not silently in a result.

The accuracy is that of torchvision's DEFAULT weights. For some architectures these come from
torchvision's 2021 training recipe rather than the paper's (``weights`` says which set:
``IMAGENET1K_V2``), e.g. ResNet-50 reaches 80.9 % instead of the 76.1 % of its original weights,
which flattens the accuracy curve of the early years. The zoo measures randomly initialised
models (a forward pass costs the same whatever the weights), so accuracy is metadata only.

Nothing here imports torch or torchvision at module import; :func:`build_model` does, lazily.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from studies.zoo.errors import ZooError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ZooModel:
    """One catalogued architecture. Units in the names: ``acc1_pct`` in percent, ``gflops`` per image.

    ``gflops`` is torchvision's ``_ops`` figure at ``resolution`` (it counts a multiply-add as one
    operation, as the papers do). ``build_kwargs`` are passed to torchvision's builder with
    ``weights=None``: for GoogLeNet and Inception-v3 they pick the weight initialisation explicitly
    (torchvision warns otherwise) and drop GoogLeNet's training-only auxiliary heads, as its
    pretrained builder does. ``image_size_kwarg`` names the builder argument that sets the input
    size of architectures whose parameters depend on it (ViT's position embeddings).
    """

    name: str
    year: int
    paper: str
    arxiv: str | None
    weights: str
    acc1_pct: float
    gflops: float
    params: int
    resolution: int
    build_kwargs: Mapping[str, Any] = field(default_factory=dict)
    image_size_kwarg: str | None = None

    def gflops_at(self, resolution: int) -> float:
        """GFLOPS per image at another square input size: the metadata's figure scaled by the pixel
        count. Exact for convolutional networks; for transformers attention grows faster than the
        pixel count, so this is a lower bound there (used only for time estimates)."""
        return self.gflops * (resolution / self.resolution) ** 2


def _m(
    name: str,
    year: int,
    paper: str,
    arxiv: str | None,
    weights: str,
    acc1_pct: float,
    gflops: float,
    params: int,
    resolution: int = 224,
    **extra: Any,
) -> ZooModel:
    return ZooModel(name, year, paper, arxiv, weights, acc1_pct, gflops, params, resolution, **extra)


#: The catalogue, in order of year. The metadata columns are torchvision's (checked by the tests).
CATALOGUE: tuple[ZooModel, ...] = (
    _m("alexnet", 2012, "Krizhevsky et al., ImageNet Classification with Deep CNNs (NIPS 2012)", None,
       "IMAGENET1K_V1", 56.522, 0.714, 61_100_840),
    _m("vgg16", 2014, "Simonyan & Zisserman, Very Deep Convolutional Networks", "1409.1556",
       "IMAGENET1K_V1", 71.592, 15.47, 138_357_544),
    _m("googlenet", 2014, "Szegedy et al., Going Deeper with Convolutions", "1409.4842",
       "IMAGENET1K_V1", 69.778, 1.498, 6_624_904,
       build_kwargs={"init_weights": True, "aux_logits": False}),
    _m("resnet18", 2015, "He et al., Deep Residual Learning for Image Recognition", "1512.03385",
       "IMAGENET1K_V1", 69.758, 1.814, 11_689_512),
    _m("resnet50", 2015, "He et al., Deep Residual Learning for Image Recognition", "1512.03385",
       "IMAGENET1K_V2", 80.858, 4.089, 25_557_032),
    _m("inception_v3", 2015, "Szegedy et al., Rethinking the Inception Architecture", "1512.00567",
       "IMAGENET1K_V1", 77.294, 5.713, 27_161_264, 299, build_kwargs={"init_weights": True}),
    _m("squeezenet1_1", 2016, "Iandola et al., SqueezeNet", "1602.07360",
       "IMAGENET1K_V1", 58.178, 0.349, 1_235_496),
    _m("densenet121", 2016, "Huang et al., Densely Connected Convolutional Networks", "1608.06993",
       "IMAGENET1K_V1", 74.434, 2.834, 7_978_856),
    _m("mobilenet_v2", 2018, "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks",
       "1801.04381", "IMAGENET1K_V2", 72.154, 0.301, 3_504_872),
    _m("shufflenet_v2_x0_5", 2018, "Ma et al., ShuffleNet V2: Practical Guidelines for Efficient CNNs",
       "1807.11164", "IMAGENET1K_V1", 60.552, 0.04, 1_366_792),
    _m("mobilenet_v3_small", 2019, "Howard et al., Searching for MobileNetV3", "1905.02244",
       "IMAGENET1K_V1", 67.668, 0.057, 2_542_856),
    _m("mobilenet_v3_large", 2019, "Howard et al., Searching for MobileNetV3", "1905.02244",
       "IMAGENET1K_V2", 75.274, 0.217, 5_483_032),
    _m("efficientnet_b0", 2019, "Tan & Le, EfficientNet: Rethinking Model Scaling for CNNs", "1905.11946",
       "IMAGENET1K_V1", 77.692, 0.386, 5_288_548),
    _m("regnet_y_400mf", 2020, "Radosavovic et al., Designing Network Design Spaces", "2003.13678",
       "IMAGENET1K_V2", 75.804, 0.402, 4_344_144),
    _m("vit_b_16", 2020, "Dosovitskiy et al., An Image is Worth 16x16 Words", "2010.11929",
       "IMAGENET1K_V1", 81.072, 17.564, 86_567_656, image_size_kwarg="image_size"),
    _m("swin_t", 2021, "Liu et al., Swin Transformer: Hierarchical Vision Transformer", "2103.14030",
       "IMAGENET1K_V1", 81.474, 4.491, 28_288_354),
    _m("efficientnet_v2_s", 2021, "Tan & Le, EfficientNetV2: Smaller Models and Faster Training",
       "2104.00298", "IMAGENET1K_V1", 84.228, 8.366, 21_458_488, 384),
    _m("convnext_base", 2022, "Liu et al., A ConvNet for the 2020s", "2201.03545",
       "IMAGENET1K_V1", 84.062, 15.355, 88_591_464),
)  # fmt: skip

#: The study's five networks: its finding is stated on these.
STUDY_MODELS: tuple[str, ...] = ("alexnet", "densenet121", "shufflenet_v2_x0_5", "vit_b_16", "convnext_base")
#: The study's exception to its own trend.
EXCEPTION_MODEL = "shufflenet_v2_x0_5"
#: What ``quick`` measures: three small networks, a smoke test in seconds.
QUICK_MODELS: tuple[str, ...] = ("squeezenet1_1", "shufflenet_v2_x0_5", "mobilenet_v3_small")

_BY_NAME: dict[str, ZooModel] = {m.name: m for m in CATALOGUE}


def model_names() -> tuple[str, ...]:
    """Every catalogued name, in catalogue (year) order."""
    return tuple(_BY_NAME)


def lookup(names: Iterable[str]) -> tuple[ZooModel, ...]:
    """The catalogue entries of ``names``, in the order given; duplicates are an error.

    An unknown name is a :class:`ZooError` that names the closest catalogued names, so a typo
    (``resnet-50``, ``vit_b16``) is answered with what was meant.
    """
    chosen: list[ZooModel] = []
    for name in names:
        entry = _BY_NAME.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, list(_BY_NAME), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else "see `greenserve zoo list`"
            raise ZooError(f"unknown model {name!r} (not in the zoo's catalogue); {hint}")
        if entry in chosen:
            raise ZooError(f"model {name!r} is listed twice")
        chosen.append(entry)
    if not chosen:
        raise ZooError("no models given")
    return tuple(chosen)


def build_model(entry: ZooModel, resolution: int | None = None) -> torch.nn.Module:
    """``entry``'s architecture with random weights (``weights=None``: nothing is downloaded), in
    eval mode, for square inputs of ``resolution`` pixels (default: the metadata's)."""
    from torchvision.models import get_model

    kwargs = dict(entry.build_kwargs)
    if entry.image_size_kwarg is not None and resolution is not None:
        kwargs[entry.image_size_kwarg] = resolution
    model: torch.nn.Module = get_model(entry.name, weights=None, **kwargs)
    return model.eval()


__all__ = [
    "CATALOGUE",
    "EXCEPTION_MODEL",
    "QUICK_MODELS",
    "STUDY_MODELS",
    "ZooModel",
    "build_model",
    "lookup",
    "model_names",
]
