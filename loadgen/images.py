"""Images to send: generated photo-like JPEGs (ImageNet-sized models), the digits samples, or a directory."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 224


def make_jpegs(count: int, *, size: int = IMAGE_SIZE, seed: int = 0, quality: int = 90) -> list[bytes]:
    """``count`` photo-like JPEGs (smooth gradient, soft blobs, sensor-like noise); deterministic in ``seed``.

    Flat or random-noise images would be unrealistically cheap or expensive to decode; this is
    close to what a camera photo scaled to 224×224 costs (about 15-25 KB at quality 90).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    bodies: list[bytes] = []
    for _ in range(count):
        angle = rng.uniform(0, 2 * math.pi)
        ramp = math.cos(angle) * xx + math.sin(angle) * yy
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
        start, end = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        pixels = start + (end - start) * ramp[..., None]
        for _ in range(3):
            cx, cy = rng.uniform(0, 1, size=2)
            radius = rng.uniform(0.08, 0.3)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
            pixels += blob[..., None] * rng.uniform(-90, 90, size=3).astype(np.float32)
        pixels += rng.normal(0, 6, size=pixels.shape).astype(np.float32)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        bodies.append(buffer.getvalue())
    return bodies


#: Image file suffixes read from a user's directory.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: What each sample set's bodies are sent as.
CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".bmp": "image/bmp",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
SAMPLES = ("digits", "photos")


class ImageSourceError(ValueError):
    """An image source that cannot give images (a missing or empty directory, an unknown sample set)."""


@dataclass(frozen=True)
class Payload:
    """One request body, its content type and an id that a trace's ``image_id`` can name."""

    image_id: str
    body: bytes
    content_type: str


def digits_pngs(count: int | None = None) -> list[bytes]:
    """The held-out scikit-learn digits as 8×8 grayscale PNGs, pixel values as the server expects them.

    The inverse of the embedded model's preprocessing (``round(v × 255 / 16)``), so that the
    embedded ``digits_cnn`` classifies them as it does in training (≈ 99 % accuracy).
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images if count is None else data.images[:count]
    bodies = []
    for sample in images:
        pixels = np.rint(np.asarray(sample, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "L").save(buffer, "PNG")
        bodies.append(buffer.getvalue())
    return bodies


def sample_payloads(name: str, count: int = 64, *, seed: int = 0) -> list[Payload]:
    """A shipped sample set: ``digits`` (8×8 PNGs) or ``photos`` (generated 224×224 JPEGs)."""
    if name == "digits":
        return [Payload(f"digits-{i}", body, "image/png") for i, body in enumerate(digits_pngs(count))]
    if name == "photos":
        return [
            Payload(f"photo-{i}", body, "image/jpeg") for i, body in enumerate(make_jpegs(count, seed=seed))
        ]
    raise ImageSourceError(
        f"unknown sample set {name!r}; choose one of {', '.join(SAMPLES)} or give a directory"
    )


def directory_payloads(directory: Path) -> list[Payload]:
    """Every image file directly in ``directory`` (sorted by name; the id is the file name)."""
    if not directory.is_dir():
        raise ImageSourceError(f"image directory {str(directory)!r} does not exist")
    payloads = [
        Payload(path.name, path.read_bytes(), CONTENT_TYPES[path.suffix.lower()])
        for path in sorted(directory.iterdir())
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not payloads:
        raise ImageSourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {str(directory)!r}")
    return payloads


def load_payloads(source: str, count: int = 64) -> list[Payload]:
    """``source`` is a sample set's name (``digits``, ``photos``) or a directory of images."""
    if source in SAMPLES:
        return sample_payloads(source, count)
    return directory_payloads(Path(source))


def default_sample_for(model: str) -> str:
    """The shipped samples that suit ``model``: digits for the embedded model, photos for the rest."""
    return "digits" if model == "digits_cnn" else "photos"
