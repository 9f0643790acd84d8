"""The embedded default model: a small CNN for scikit-learn's 8×8 digits images.

It lets ``make run`` serve real predictions offline, with no download. The checkpoint
(``service/assets/digits_cnn.pt``, about 160 KB) is re-created by ``greenserve train-default``.

Input contract: an image is converted to grayscale, resized to 8×8 and scaled back to the digits
data's 0–16 range, ink bright (``v = pixel × 16 / 255``). A digits sample sent as an 8-bit PNG with
``round(v × 255 / 16)`` therefore reaches the model within 0.04 of its original value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "digits_cnn.pt"
LABELS = [str(d) for d in range(10)]
IMAGE_SIZE = 8
MAX_VALUE = 16.0
SPLIT_SEED = 0
TEST_FRACTION = 0.2


class DigitsCNN(nn.Module):
    """Two 3×3 convolutions, one 2×2 max-pool, two linear layers; about 38 k parameters."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x / MAX_VALUE))
        return out


def preprocess(image: Image.Image) -> torch.Tensor:
    """Any image → a 1×8×8 float tensor in the digits range 0–16 (grayscale, ink bright)."""
    gray = image.convert("L")
    if gray.size != (IMAGE_SIZE, IMAGE_SIZE):
        # BOX averages every source pixel: the right filter for a large downscale to 8×8.
        gray = gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    pixels = np.asarray(gray, dtype=np.float32) * (MAX_VALUE / 255.0)
    return torch.from_numpy(pixels).unsqueeze(0)


def to_png_pixels(sample: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """A digits sample (values 0–16, 64 or 8×8) → 8-bit pixels as ``round(v × 255 / 16)``."""
    return np.rint(np.asarray(sample, dtype=np.float64).reshape(8, 8) * 255.0 / MAX_VALUE).astype(np.uint8)


@dataclass(frozen=True)
class DigitsSplit:
    x_train: np.ndarray[Any, Any]
    y_train: np.ndarray[Any, Any]
    x_test: np.ndarray[Any, Any]
    y_test: np.ndarray[Any, Any]


def load_split(seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION) -> DigitsSplit:
    """scikit-learn's digits, split deterministically and stratified.

    The held-out part is never trained on: the HTTP accuracy test sends it.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.images.astype(np.float32),
        data.target.astype(np.int64),
        test_size=test_fraction,
        random_state=seed,
        stratify=data.target,
    )
    return DigitsSplit(x_train, y_train, x_test, y_test)


def default_checkpoint_path() -> Path:
    return Path(str(resources.files("service") / "assets" / CHECKPOINT_NAME))


def load_model(path: Path | None = None) -> tuple[DigitsCNN, list[str]]:
    """Load the embedded (or a re-trained) checkpoint safely (``weights_only=True``)."""
    path = path or default_checkpoint_path()
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    labels = list(checkpoint.get("labels", LABELS))
    model = DigitsCNN(num_classes=len(labels))
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model, labels


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        return float((model(x).argmax(dim=1) == y).float().mean())


def train(
    out: Path,
    *,
    epochs: int = 60,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 3e-3,
) -> dict[str, float]:
    """Train the embedded model on the training split and save it; returns its accuracies.

    Training sees each image quantised to 8 bits exactly as a client's PNG would be, so what
    the model learns is what it is served.
    """
    torch.manual_seed(seed)
    split = load_split()
    quantise = np.vectorize(lambda v: round(v * 255 / MAX_VALUE) * MAX_VALUE / 255)
    x_train = torch.from_numpy(quantise(split.x_train).astype(np.float32)).unsqueeze(1)
    x_test = torch.from_numpy(quantise(split.x_test).astype(np.float32)).unsqueeze(1)
    y_train = torch.from_numpy(split.y_train)
    y_test = torch.from_numpy(split.y_test)
    model = DigitsCNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            # Small random shifts (±1 px) make the model robust to off-centre digits.
            batch = torch.roll(x_train[idx], shifts=tuple(torch.randint(-1, 2, (2,)).tolist()), dims=(2, 3))
            optimiser.zero_grad()
            loss = loss_fn(model(batch), y_train[idx])
            loss.backward()
            optimiser.step()
        scheduler.step()
        if (epoch + 1) % 10 == 0:
            logger.info("epoch %d/%d: loss %.4f", epoch + 1, epochs, loss.item())
    result = {
        "train_accuracy": _accuracy(model, x_train, y_train),
        "test_accuracy": _accuracy(model, x_test, y_test),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "labels": LABELS,
            "meta": {**result, "seed": seed, "epochs": epochs, "split_seed": SPLIT_SEED},
        },
        out,
    )
    return result
