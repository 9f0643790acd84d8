"""The tensor preprocessing (service.preprocess) against torchvision's preset it replaces.

Tolerance: torch's antialiased bilinear resize on uint8 is written to reproduce PIL's (the same
filter support and fixed-point coefficients), so the two paths may differ by one level of 255 where
rounding falls differently. After normalisation one level is 1 / (255 · std) ≤ 0.0175 (the smallest
ImageNet std, 0.225); we allow 1.5 levels at any value and a mean difference below 0.1 level, and
require the same top class with probabilities within 1e-3 through a real (seeded) network.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import get_model, get_model_weights
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from loadgen.images import make_jpegs
from service.config import Settings
from service.imaging import DecodeLimits, decode_image
from service.model import TorchClassifier, load_classifier
from service.preprocess import TensorImageClassification, from_preset

PRESET = get_model_weights("shufflenet_v2_x0_5").DEFAULT.transforms()
ONE_LEVEL = 1 / (255 * 0.225)


def _photos() -> list[Image.Image]:
    """Decoded images of several sizes and aspect ratios, as the server decodes them."""
    limits = DecodeLimits()
    images = [decode_image(body, limits, draft_size=(224, 224)) for body in make_jpegs(6, seed=3)]
    for size, seed in ((512, 4), (100, 5)):
        images.append(decode_image(make_jpegs(1, size=size, seed=seed)[0], limits, draft_size=(224, 224)))
    base = images[0]
    images += [base.resize((640, 480)), base.resize((300, 1000)), base.resize((257, 255))]
    return images


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return _photos()


def test_the_tensor_path_matches_the_preset_within_a_level(photos: list[Image.Image]) -> None:
    ours = from_preset(PRESET)
    assert isinstance(ours, TensorImageClassification)
    for image in photos:
        want, got = PRESET(image), ours(image)
        assert got.shape == want.shape == (3, 224, 224)
        assert got.dtype == torch.float32 and got.is_contiguous()
        diff = (got - want).abs()
        assert diff.max().item() <= 1.5 * ONE_LEVEL, image.size
        assert diff.mean().item() <= 0.1 * ONE_LEVEL, image.size


def test_predictions_are_the_same_through_a_network(photos: list[Image.Image]) -> None:
    torch.manual_seed(0)
    net = get_model("shufflenet_v2_x0_5", weights=None).eval()
    ours = from_preset(PRESET)
    assert ours is not None
    with torch.inference_mode():
        want = net(torch.stack([PRESET(im) for im in photos])).softmax(1)
        got = net(torch.stack([ours(im) for im in photos])).softmax(1)
    assert torch.equal(want.argmax(1), got.argmax(1))
    assert (want - got).abs().max().item() < 1e-3


def test_a_grayscale_image_gets_three_equal_channels() -> None:
    # The preset itself fails on "L" images (its in-place normalisation cannot broadcast one
    # channel to three): a grayscale photo to a torchvision model was a server error before.
    gray = Image.fromarray(np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (200, 1)), "L")
    with pytest.raises(RuntimeError):
        PRESET(gray)
    ours = from_preset(PRESET)
    assert ours is not None
    got = ours(gray)
    assert got.shape == (3, 224, 224)
    want = PRESET(gray.convert("RGB"))
    assert (got - want).abs().max().item() <= 1.5 * ONE_LEVEL


def test_only_bilinear_classification_presets_are_replaced() -> None:
    assert from_preset(object()) is None
    bicubic = ImageClassification(crop_size=224, resize_size=232, interpolation=InterpolationMode.BICUBIC)
    assert from_preset(bicubic) is None
    other = from_preset(ImageClassification(crop_size=160, resize_size=176))
    assert other is not None and other.crop_size == 160 and other.resize_size == 176


def test_the_server_loads_torchvision_models_with_the_tensor_path() -> None:
    classifier = load_classifier(Settings(model="shufflenet_v2_x0_5", weights="random"))
    assert isinstance(classifier, TorchClassifier)
    assert isinstance(classifier._preprocess, TensorImageClassification)
    body = make_jpegs(1, seed=9)[0]
    image = decode_image(body, DecodeLimits(), draft_size=classifier.draft_size)
    assert classifier.preprocess(image).shape == (3, 224, 224)
    # EXIF orientation still applies before preprocessing: a rotated JPEG comes out upright.
    upright = Image.open(io.BytesIO(body)).convert("RGB").resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", exif=exif, quality=95)
    decoded = decode_image(buffer.getvalue(), DecodeLimits(), draft_size=classifier.draft_size)
    assert decoded.size == (300, 200)
