"""Model loading and the classifier interface the inference engine runs.

A :class:`Classifier` turns a decoded image into an input tensor (``preprocess``, run in the
decode thread pool) and a list of such tensors into class probabilities (``predict``, run in the
model's worker thread). Three kinds are built in:

* the embedded ``digits_cnn`` (:mod:`service.digits`), the offline default;
* any torchvision classification architecture by name (``torchvision.models.get_model``), with
  weights from a file, from torchvision's cache or download, or ``random`` for energy benchmarks;
* ``noop``, which computes nothing, to measure the serving machinery's own overhead.

``module:factory`` loads a user's own :class:`Classifier` (the factory gets the settings).
"""

from __future__ import annotations

import abc
import difflib
import importlib
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from service import digits
from service.config import EMBEDDED_MODEL, Settings
from service.errors import ConfigurationError

logger = logging.getLogger(__name__)

Preprocess = Callable[[Image.Image], torch.Tensor]

#: A held-out digit (a 7) shipped with the package, the embedded model's warm-up input.
EXAMPLE_DIGIT = digits.default_checkpoint_path().with_name("example_digit.png")


class Classifier(abc.ABC):
    """What the server needs of a model. ``predict`` is only ever called from one thread at a time
    per batch slot; ``preprocess`` is called concurrently from decode threads."""

    name: str
    weights: str
    device: str
    labels: Sequence[str]
    #: A JPEG larger than this is decoded with DCT scaling (Pillow's draft mode): far less work
    #: for photos much bigger than the model's input, and the result is still at least this big.
    draft_size: tuple[int, int] | None = None

    @abc.abstractmethod
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """A decoded ``L`` or ``RGB`` image → the model's input tensor for one item."""

    @abc.abstractmethod
    def predict(self, batch: list[torch.Tensor]) -> torch.Tensor:
        """Items from :meth:`preprocess` → probabilities, shape ``(len(batch), len(labels))``, on CPU."""

    def example_image(self) -> Image.Image:
        """An input for warm-up batches."""
        return Image.new("RGB", (224, 224), (127, 127, 127))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights": self.weights,
            "device": self.device,
            "classes": len(self.labels),
        }


class TorchClassifier(Classifier):
    """An ``nn.Module`` that outputs logits, with its preprocessing."""

    def __init__(
        self,
        module: torch.nn.Module,
        preprocess: Preprocess,
        *,
        name: str,
        weights: str,
        labels: Sequence[str],
        device: str,
        example: Image.Image | None = None,
        draft_size: tuple[int, int] | None = None,
    ) -> None:
        self.module = module.eval().to(device)
        #: What ``predict`` calls: the module, or its TorchScript trace (:meth:`trace`).
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.module
        self.runtime = "eager"
        self._preprocess = preprocess
        self.name = name
        self.weights = weights
        self.labels = list(labels)
        self.device = device
        self._example = example
        self.draft_size = draft_size

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._preprocess(image)

    def predict(self, batch: list[torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            x = torch.stack(batch).to(self.device, non_blocking=True)
            probs: torch.Tensor = self.forward(x).float().softmax(dim=1)
            return probs.cpu()  # .cpu() also waits for a CUDA device to finish

    def example_image(self) -> Image.Image:
        return self._example if self._example is not None else super().example_image()

    def trace(self) -> bool:
        """Run the forward as a TorchScript trace from now on; ``False`` (and eager) where it fails.

        Why: in eager mode every op of the forward (about 200 for shufflenet_v2) returns to Python
        and takes the GIL again; in a server the event loop and the decode threads hold the GIL
        often, and the model thread waits for it between ops (measured: 89.9 ms per batch of 16
        served against 81.6 ms of the thread's CPU time). A trace runs the whole forward in C++
        with the GIL released once, with the same kernels (so the same outputs: checked here).
        ``torch.jit.trace`` is deprecated in favour of ``torch.compile``/``torch.export``, which
        compile with a C++ toolchain (minutes on a small CPU) or run op by op from Python again;
        until they offer the same, the trace is the runtime that frees the GIL, and ``eager`` stays
        one setting away (``model_runtime``).

        The trace is checked against the eager module at two batch sizes other than the traced
        one (a trace that baked the batch size in, or took a data-dependent branch, differs); a
        mismatch or any error keeps eager and logs why.
        """
        item = self.preprocess(self.example_image())
        generator = torch.Generator().manual_seed(0)

        def batch(n: int) -> torch.Tensor:
            noise = torch.rand((n, *item.shape), generator=generator) * 0.1
            return (item.unsqueeze(0) + noise.to(item.dtype)).to(self.device)

        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the deprecation and tracer warnings; checked below
                tracer: Any = torch.jit.trace  # untyped in torch's stubs
                traced = tracer(self.module, batch(2), check_trace=False)
                for n in (1, 3):
                    x = batch(n)
                    got, want = traced(x), self.module(x)
                    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
                        raise ValueError(f"its output differs from eager's at batch size {n}")
        except Exception as exc:  # any failure of the tracer is a reason to stay eager
            logger.warning("model %s runs eagerly: its TorchScript trace failed (%s)", self.name, exc)
            return False
        self.forward = traced
        self.runtime = "torchscript"
        return True

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "runtime": self.runtime}


class NoopClassifier(Classifier):
    """Computes nothing: every image gets the same uniform scores. For overhead benchmarks."""

    def __init__(self, num_classes: int = 10) -> None:
        self.name = "noop"
        self.weights = "none"
        self.device = "cpu"
        self.labels = [str(i) for i in range(num_classes)]
        self._row = torch.full((num_classes,), 1.0 / num_classes)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._row

    def predict(self, batch: list[torch.Tensor]) -> torch.Tensor:
        return self._row.expand(len(batch), -1)


def read_labels(path: Path) -> list[str]:
    """Labels from a JSON list or a text file with one label per line."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        labels = json.loads(text)
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ConfigurationError(f"labels file {path} must hold a JSON list of strings")
        return labels
    return [line.strip() for line in text.splitlines() if line.strip()]


def _warn_random(name: str) -> None:
    logger.warning(
        "=== model %s has RANDOM weights: predictions are meaningless; use this for energy and "
        "speed benchmarks only ===",
        name,
    )


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigurationError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor objects
        raise ConfigurationError(f"cannot load weights file {path} safely (weights_only): {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ConfigurationError(f"weights file {path} holds {type(obj).__name__}, not a state dict")
    return obj


def _load_digits(settings: Settings, device: str) -> Classifier:
    weights = settings.weights or "embedded"
    if weights == "random":
        _warn_random(EMBEDDED_MODEL)
        module, labels = digits.DigitsCNN(), digits.LABELS
    elif weights == "embedded":
        module, labels = digits.load_model()
    else:
        try:
            module, labels = digits.load_model(Path(weights))
        except (OSError, RuntimeError, KeyError) as exc:
            raise ConfigurationError(f"cannot load digits_cnn weights from {weights}: {exc}") from exc
    if settings.labels_file is not None:
        labels = read_labels(settings.labels_file)
    # A held-out digit shipped with the package (the same as docs/examples/digit.png): warm-up needs
    # no scikit-learn, which only the train extra installs.
    with Image.open(EXAMPLE_DIGIT) as image:
        example = image.copy()
    return TorchClassifier(
        module,
        digits.preprocess,
        name=EMBEDDED_MODEL,
        weights=weights,
        labels=labels,
        device=device,
        example=example,
    )


def _load_torchvision(settings: Settings, device: str) -> Classifier:
    from torchvision.models import get_model, get_model_weights

    from service.preprocess import from_preset

    name = settings.model
    check_model_name(name)
    weights_enum: Any = get_model_weights(name)
    spec = settings.weights or "DEFAULT"
    default = weights_enum.DEFAULT
    labels: list[str] = list(default.meta.get("categories") or [])
    if spec == "random":
        _warn_random(name)
        module = get_model(name, weights=None)
        used = "random"
    elif spec == "DEFAULT" or spec in weights_enum.__members__:
        chosen = default if spec == "DEFAULT" else weights_enum[spec]
        try:
            module = get_model(name, weights=chosen)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError: offline, proxy, DNS
            hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(chosen.url).name
            raise ConfigurationError(
                f"weights {chosen} for {name} are not in torchvision's cache ({hub}) and could not be "
                f"downloaded ({exc.__class__.__name__}: {exc}). Put the file there, pass a weights file "
                "path, or use weights=random for energy benchmarks."
            ) from exc
        used = str(chosen).split(".")[-1]
        default = chosen
    else:
        state = _load_state_dict(Path(spec))
        num_classes = settings.num_classes
        if num_classes is None and settings.labels_file is not None:
            num_classes = len(read_labels(settings.labels_file))
        num_classes = num_classes or len(labels) or 1000
        module = get_model(name, weights=None, num_classes=num_classes)
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigurationError(f"weights file {spec} does not fit {name}: {exc}") from exc
        used = f"file:{spec}"
        if len(labels) != num_classes:
            labels = [str(i) for i in range(num_classes)]
    if settings.labels_file is not None:
        labels = read_labels(settings.labels_file)
    out_features = _num_outputs(module)
    if out_features is not None and len(labels) != out_features:
        raise ConfigurationError(f"{len(labels)} labels for a model with {out_features} outputs")
    transforms = default.transforms()
    crop = getattr(transforms, "crop_size", [224])[0]
    return TorchClassifier(
        module,
        from_preset(transforms) or transforms,
        name=name,
        weights=used,
        labels=labels,
        device=device,
        example=Image.new("RGB", (crop, crop), (127, 127, 127)),
        draft_size=(crop, crop),
    )


def _num_outputs(module: torch.nn.Module) -> int | None:
    last = None
    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear | torch.nn.Conv2d):
            last = sub
    if isinstance(last, torch.nn.Linear):
        return last.out_features
    return None


def _load_factory(settings: Settings) -> Classifier:
    module_name, _, attr = settings.model.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot import model factory {settings.model!r}: {exc}") from exc
    classifier = factory(settings)
    if not isinstance(classifier, Classifier):
        raise ConfigurationError(f"{settings.model} returned {type(classifier).__name__}, not a Classifier")
    return classifier


def check_model_name(name: str) -> None:
    """:class:`ConfigurationError` unless ``name`` is a model greenserve can serve: the embedded
    model, ``noop``, a ``module:factory``, or a torchvision classification architecture (with
    close names suggested). Checks the name only; nothing is loaded."""
    if name in (EMBEDDED_MODEL, "noop") or ":" in name:
        return
    import torchvision
    from torchvision.models import list_models

    known = list_models(module=torchvision.models)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigurationError(f"unknown model {name!r}: not a torchvision classification model{hint}")


def load_classifier(settings: Settings) -> Classifier:
    """Build the configured classifier; raises :class:`ConfigurationError` with a clear message."""
    device = settings.resolved_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigurationError(f"device {device} requested but CUDA is not available")
    if settings.model == "noop":
        return NoopClassifier()
    if ":" in settings.model:
        return _load_factory(settings)
    if settings.model == EMBEDDED_MODEL:
        classifier = _load_digits(settings, device)
    else:
        classifier = _load_torchvision(settings, device)
    if settings.model_runtime == "torchscript" and isinstance(classifier, TorchClassifier):
        classifier.trace()
    return classifier
