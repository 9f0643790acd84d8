"""Image-classification preprocessing on tensors: a decoded image in, the model's input out.

torchvision's ``ImageClassification`` preset (``weights.transforms()``) resizes and crops the PIL
image, then converts it to a tensor, to floats, and normalises it: five steps, three of them on a
float image, and each of its torch calls takes the GIL again in the decode thread that runs it.
Measured on the development VM (224×224 JPEGs, one thread), the preset costs 1.35 ms per image on
top of the 0.26 ms decode; :class:`TensorImageClassification` does the same work in 0.25 ms:

1. the decoded image's pixels become a ``uint8`` tensor (``numpy.array``, one copy);
2. resize (shorter side to ``resize_size``, bilinear with antialiasing, as the preset) and centre
   crop on those ``uint8`` pixels (torch's ``uint8`` antialiased kernels, written to match PIL's);
3. one conversion to ``float32`` and one in-place multiply-add that is the normalisation
   ``(x / 255 - mean) / std``.

The output equals the preset's (tests/service/test_preprocess.py compares them on photographs and
synthetic images); a grayscale (``"L"``) image is given three equal channels, where the preset
fails on it (its in-place normalisation cannot broadcast one channel to three).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

__all__ = ["TensorImageClassification", "from_preset"]


class TensorImageClassification:
    """``resize → centre crop → normalise`` of a decoded ``RGB`` or ``L`` PIL image, on tensors.

    Thread-safe (no state beyond constants): called concurrently from the decode pool.
    """

    def __init__(
        self,
        *,
        crop_size: int,
        resize_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: InterpolationMode = InterpolationMode.BILINEAR,
        antialias: bool = True,
    ) -> None:
        self.crop_size = crop_size
        self.resize_size = resize_size
        self.interpolation = interpolation
        self.antialias = antialias
        std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        # (x / 255 - mean) / std  ==  x * scale - shift
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = mean_t / std_t
        self.channels = len(mean)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        # H×W or H×W×C uint8; np.array, not asarray: torch wants a writable buffer (it warns on
        # PIL's read-only one), and the copy of a 224×224 image costs 5 µs.
        x = torch.from_numpy(np.array(image))
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        if x.shape[0] == 1 and self.channels == 3:
            x = x.expand(3, -1, -1)
        x = tvf.resize(x, [self.resize_size], interpolation=self.interpolation, antialias=self.antialias)
        x = tvf.center_crop(x, [self.crop_size])
        out: torch.Tensor = x.to(torch.float32, memory_format=torch.contiguous_format)
        return out.mul_(self._scale).sub_(self._shift)

    def __repr__(self) -> str:
        return (
            f"TensorImageClassification(crop_size={self.crop_size}, resize_size={self.resize_size}, "
            f"interpolation={self.interpolation.value}, antialias={self.antialias})"
        )


def from_preset(preset: object) -> TensorImageClassification | None:
    """The tensor equivalent of a torchvision ``ImageClassification`` preset, or ``None`` for any
    other transform (which is then used as it is)."""
    from torchvision.transforms._presets import ImageClassification

    if not isinstance(preset, ImageClassification) or preset.interpolation != InterpolationMode.BILINEAR:
        # Other interpolations (a few presets use bicubic) keep the preset: torch's uint8 kernels
        # are written to match PIL's for bilinear; others are not compared here.
        return None
    return TensorImageClassification(
        crop_size=int(preset.crop_size[0]),
        resize_size=int(preset.resize_size[0]),
        mean=preset.mean,
        std=preset.std,
        interpolation=preset.interpolation,
        antialias=bool(preset.antialias) if preset.antialias is not None else True,
    )
