"""Model loading: torchvision by name, weights files, labels, offline errors, the embedded model."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service import digits
from service.config import Settings
from service.errors import ConfigurationError
from service.inference import InferenceEngine
from service.model import NoopClassifier, TorchClassifier, load_classifier


def settings(**kw: object) -> Settings:
    return Settings(**kw)  # type: ignore[arg-type]


def test_embedded_checkpoint_is_small_and_accurate_on_held_out_digits() -> None:
    path = digits.default_checkpoint_path()
    assert path.stat().st_size < 300 * 1024
    classifier = load_classifier(settings())
    split = digits.load_split()
    # The same path as HTTP: 8-bit grayscale 8×8 PNG pixels, then the model's preprocessing.
    inputs = [classifier.preprocess(Image.fromarray(digits.to_png_pixels(x))) for x in split.x_test]
    predicted = classifier.predict(inputs).argmax(dim=1).numpy()
    assert (predicted == split.y_test).mean() >= 0.95


def test_preprocess_converts_any_image_to_the_digits_range() -> None:
    big = Image.new("RGB", (64, 64), (255, 255, 255))
    tensor = digits.preprocess(big)
    assert tensor.shape == (1, 8, 8)
    assert torch.allclose(tensor, torch.full((1, 8, 8), 16.0))
    sample = np.arange(64).reshape(8, 8) % 17
    roundtrip = digits.preprocess(Image.fromarray(digits.to_png_pixels(sample)))
    assert np.abs(roundtrip.numpy()[0] - sample).max() < 0.04


def test_torchvision_model_by_name_with_random_weights(caplog: pytest.LogCaptureFixture) -> None:
    classifier = load_classifier(settings(model="shufflenet_v2_x0_5", weights="random"))
    assert isinstance(classifier, TorchClassifier)
    assert "RANDOM weights" in caplog.text
    assert len(classifier.labels) == 1000 and classifier.labels[0] == "tench"  # ImageNet, from metadata
    assert classifier.draft_size == (224, 224)
    x = classifier.preprocess(Image.new("RGB", (320, 240), (10, 200, 30)))
    assert x.shape == (3, 224, 224)
    probs = classifier.predict([x, x])
    assert probs.shape == (2, 1000)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2), atol=1e-4)


def test_weights_file_and_labels_file(tmp_path: Path) -> None:
    import torchvision

    model = torchvision.models.get_model("squeezenet1_1", weights=None, num_classes=3)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pt")
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    classifier = load_classifier(
        settings(model="squeezenet1_1", weights=str(tmp_path / "w.pt"), labels_file=tmp_path / "labels.txt")
    )
    assert classifier.labels == ["cat", "dog", "bird"]
    assert classifier.weights == f"file:{tmp_path / 'w.pt'}"
    x = classifier.preprocess(Image.new("RGB", (224, 224)))
    assert classifier.predict([x]).shape == (1, 3)
    (tmp_path / "labels.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(ConfigurationError, match="does not fit squeezenet1_1"):
        load_classifier(
            settings(
                model="squeezenet1_1", weights=str(tmp_path / "w.pt"), labels_file=tmp_path / "labels.json"
            )
        )


def test_weights_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_classifier(settings(model="resnet18", weights=str(tmp_path / "missing.pt")))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigurationError, match="cannot load weights file"):
        load_classifier(settings(model="resnet18", weights=str(tmp_path / "junk.pt")))


def test_unknown_model_suggests_names() -> None:
    with pytest.raises(ConfigurationError, match="did you mean resnet18"):
        load_classifier(settings(model="resnet-18"))


def test_default_weights_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigurationError) as info:
        load_classifier(settings(model="resnet18"))
    message = str(info.value)
    assert "resnet18" in message and "could not be downloaded" in message
    assert "weights=random" in message and str(tmp_path) in message


def test_cuda_requested_without_cuda_is_refused() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigurationError, match="CUDA is not available"):
        load_classifier(settings(device="cuda"))


def test_factory_models(tmp_path: Path) -> None:
    assert load_classifier(settings(model="tests.fakes:slow_classifier")).name == "fake"
    with pytest.raises(ConfigurationError, match="cannot import model factory"):
        load_classifier(settings(model="tests.nowhere:factory"))
    with pytest.raises(ConfigurationError, match="not a Classifier"):
        load_classifier(settings(model="tests.bad_factory:make"))


def test_noop_classifier_and_engine_energy_split() -> None:
    from energy import CpuSpread, StageEnergy, close_accountant, create_accountant
    from service.request_energy import compose

    accountant = create_accountant("estimate")
    for _ in range(3):  # the curve needs two points before it prices CPU time
        accountant.cpu.sample()
        time.sleep(0.01)
    engine = InferenceEngine(NoopClassifier(), accountant)
    items = engine._compute([torch.zeros(1)] * 4)
    engine.close()
    (((stage, source), batch_j),) = accountant.attributed_j().items()
    # The one place a batch's energy is split among its requests (with their own decode and serving).
    decode = StageEnergy("decode", {"estimate": 0.0})
    shares = [
        compose(
            accountant, batch_model=i.batch_energy, batch_size=4, decode=decode, serving=CpuSpread()
        ).parts[0]
        for i in items
    ]
    close_accountant(accountant)
    assert len(items) == 4
    assert [i.batch_energy.joules for i in items] == [pytest.approx(batch_j)] * 4  # the batch's, in each
    assert stage == "model" and source == "estimate" and batch_j > 0
    assert {tuple(s.by_source) for s in shares} == {("estimate",)}
    assert sum(s.joules or 0.0 for s in shares) == pytest.approx(batch_j)
    assert len({s.joules for s in shares}) == 1  # equal shares
    assert len(items[0].indices) == 10


class _ThreadRecorder(NoopClassifier):
    """Records which thread ran each batch, and its size."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def predict(self, batch: list[torch.Tensor]) -> torch.Tensor:
        self.calls.append((threading.current_thread().name, len(batch)))
        time.sleep(0.01)  # long enough that one thread cannot take two jobs of a round
        return super().predict(batch)


@pytest.mark.parametrize("workers", [1, 3])
async def test_warm_up_runs_each_size_in_every_thread_that_will_serve(workers: int) -> None:
    """Thread-local state (torch/oneDNN scratch, the OpenMP team) is warmed only in the thread that
    ran: warming elsewhere left the first served batch cold."""
    from energy import create_accountant

    classifier = _ThreadRecorder()
    engine = InferenceEngine(classifier, create_accountant("estimate"), workers=workers)
    try:
        await engine.warm_up((1, 8))
        warmed = {(thread, size) for thread, size in classifier.calls}
        threads = {thread for thread, _ in warmed}
        assert len(threads) == workers
        assert warmed == {(thread, size) for thread in threads for size in (1, 8)}
        assert all(thread.startswith("model") for thread in threads)
        classifier.calls.clear()
        await asyncio.gather(*(engine.run_batch([torch.zeros(1)] * 2) for _ in range(workers)))
        assert {thread for thread, _ in classifier.calls} <= threads  # served by warmed threads
    finally:
        engine.close()


class _BatchBaked(torch.nn.Module):
    """Traces, but bakes the traced batch size into a reshape: the check must catch it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(int(x.shape[0]), -1)
        return flat[:, :3] * 2


class _Untraceable(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no tracing here")


def _classifier(module: torch.nn.Module) -> TorchClassifier:
    return TorchClassifier(
        module,
        lambda image: torch.from_numpy(np.asarray(image, dtype=np.float32)).flatten()[:12],
        name="toy",
        weights="random",
        labels=["a", "b", "c"],
        device="cpu",
        example=Image.new("L", (4, 4), 7),
    )


@pytest.mark.parametrize("name", ["digits_cnn", "shufflenet_v2_x0_5"])
def test_models_run_as_torchscript_traces_with_eager_outputs(name: str) -> None:
    weights = None if name == "digits_cnn" else "random"
    traced = load_classifier(settings(model=name, weights=weights))
    eager = load_classifier(settings(model=name, weights=weights, model_runtime="eager"))
    assert isinstance(traced, TorchClassifier) and isinstance(eager, TorchClassifier)
    assert traced.runtime == "torchscript" and isinstance(traced.forward, torch.jit.ScriptModule)
    assert eager.runtime == "eager" and traced.describe()["runtime"] == "torchscript"
    if name != "digits_cnn":  # random weights: the same ones for both
        traced.module.load_state_dict(eager.module.state_dict())
        traced.trace()
    item = traced.preprocess(traced.example_image())
    for n in (1, 5):
        batch = [item + 0.01 * i for i in range(n)]
        assert torch.allclose(traced.predict(batch), eager.predict(batch), atol=1e-6)


def test_a_trace_that_differs_from_eager_or_fails_stays_eager(caplog: pytest.LogCaptureFixture) -> None:
    baked = _classifier(_BatchBaked())
    with caplog.at_level("WARNING"):
        assert baked.trace() is False
    assert baked.runtime == "eager" and baked.forward is baked.module
    assert "runs eagerly" in caplog.text
    broken = _classifier(_Untraceable())
    assert broken.trace() is False and broken.runtime == "eager"
