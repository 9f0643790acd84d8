"""Test classifiers: controllable speed, gates and failures, behind the real Classifier interface."""

from __future__ import annotations

import os
import threading
import time

import torch
from PIL import Image

from service.config import Settings
from service.model import Classifier

POISON = (255, 0, 0)  # a pure red image makes FakeClassifier's batch fail


class FakeClassifier(Classifier):
    """Scores class ``i`` highest for an image whose mean gray level is ``i``; records computed items.

    ``gate`` (a threading.Event) holds every predict call until set; ``delay_s`` slows each batch
    (sleeping), ``busy_s`` makes it use that much CPU time;
    a batch that holds a pure-red image raises, like a model failing on a batch.
    """

    def __init__(self, num_classes: int = 4, *, delay_s: float = 0.0, busy_s: float = 0.0) -> None:
        self.name = "fake"
        self.weights = "none"
        self.device = "cpu"
        self.labels = [f"class-{i}" for i in range(num_classes)]
        self.delay_s = delay_s
        self.busy_s = busy_s
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.computed: list[int] = []  # tags of every item that reached predict
        self.batch_sizes: list[int] = []

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        rgb = image.convert("RGB")
        r, g, b = rgb.getpixel((0, 0))  # type: ignore[misc]
        poison = 1.0 if (r, g, b) == POISON else 0.0
        return torch.tensor([float(g), poison])  # [tag, poison flag]

    def predict(self, batch: list[torch.Tensor]) -> torch.Tensor:
        self.entered.set()
        self.gate.wait(timeout=30)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.busy_s:  # CPU work in the model thread, as a real model's batch is
            started = time.thread_time()
            while time.thread_time() - started < self.busy_s:
                pass
        x = torch.stack(batch)
        self.batch_sizes.append(len(batch))
        if bool((x[:, 1] > 0).any()):
            raise RuntimeError("fake model failure (poison image in batch)")
        self.computed.extend(int(t) for t in x[:, 0].tolist())
        logits = torch.zeros(len(batch), len(self.labels))
        logits[torch.arange(len(batch)), x[:, 0].long() % len(self.labels)] = 10.0
        return logits.softmax(dim=1)

    def example_image(self) -> Image.Image:
        return Image.new("RGB", (8, 8), (0, 0, 0))


def slow_classifier(settings: Settings) -> Classifier:
    """Factory for a real server process: ``--model tests.fakes:slow_classifier``."""
    return FakeClassifier(delay_s=float(os.environ.get("FAKE_DELAY_S", "0.05")))


def busy_classifier(settings: Settings) -> Classifier:
    """``--model tests.fakes:busy_classifier``: batches that use ``FAKE_BUSY_S`` (5 ms) of CPU."""
    return FakeClassifier(busy_s=float(os.environ.get("FAKE_BUSY_S", "0.005")))
