"""Safe image decoding: request bytes in, a fully loaded ``"RGB"`` or ``"L"`` PIL image out.

This module knows nothing of HTTP or torch. :func:`decode_image` is meant to run in a thread
pool, so it keeps no per-call global state and never touches ``warnings`` filters per call.

Order of the guards, cheapest first, so that a hostile body costs as little as possible:

1. body size (``len(data)``) against :attr:`DecodeLimits.max_body_bytes`;
2. format identification, restricted to :data:`SUPPORTED_FORMATS` (no plugin that shells out);
3. the pixel count from the header (``im.size``) against the pixel cap, *before* any pixel data
   is decoded; Pillow's own decompression-bomb guard is an error here, never a warning (see
   the "Decompression bombs" comment below);
4. the decode itself (JPEG DCT scaling first when a ``draft_size`` allows it), with every
   decoder failure turned into a short :class:`~service.errors.BadImageError`;
5. EXIF orientation, then normalisation of the pixel mode to ``"RGB"`` or ``"L"``.
"""

from __future__ import annotations

import importlib
import io
import logging
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import ExifTags, Image, JpegImagePlugin, UnidentifiedImageError, features

from service.errors import (
    BadImageError,
    GreenserveError,
    ImageTooLargeError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)

__all__ = [
    "ALPHA_BACKGROUND",
    "SUPPORTED_FORMATS",
    "SUPPORTED_MEDIA_TYPES",
    "DecodeLimits",
    "check_media_type",
    "decode_image",
]

logger = logging.getLogger(__name__)

# --- Formats ------------------------------------------------------------------------------------

# Pillow format name -> (plugin module, codec/module that must be compiled in, media types).
# Only pure in-process decoders: nothing that shells out (EPS -> Ghostscript) or parses
# documents (PDF, WMF). "image/jpg" and the other aliases are what real clients send.
_FORMAT_TABLE: Final[dict[str, tuple[str, str | None, tuple[str, ...]]]] = {
    "JPEG": ("JpegImagePlugin", "jpg", ("image/jpeg", "image/jpg", "image/pjpeg")),
    "PNG": ("PngImagePlugin", "zlib", ("image/png", "image/apng")),
    "GIF": ("GifImagePlugin", None, ("image/gif",)),
    "BMP": ("BmpImagePlugin", None, ("image/bmp", "image/x-bmp", "image/x-ms-bmp")),
    "TIFF": ("TiffImagePlugin", None, ("image/tiff",)),
    "WEBP": ("WebPImagePlugin", "webp", ("image/webp",)),
    "PPM": (
        "PpmImagePlugin",
        None,
        (
            "image/x-portable-pixmap",
            "image/x-portable-anymap",
            "image/x-portable-graymap",
            "image/x-portable-bitmap",
        ),
    ),
}


def _available_formats() -> tuple[str, ...]:
    """The formats of :data:`_FORMAT_TABLE` whose plugin is registered and whose codec is built in."""
    available = []
    for name, (module, feature, _media_types) in _FORMAT_TABLE.items():
        # Importing a plugin registers it in Image.OPEN; a plugin whose C library is missing
        # (WebP without libwebp) still imports, hence the feature check.
        importlib.import_module(f"PIL.{module}")
        if name in Image.OPEN and (feature is None or features.check(feature)):
            available.append(name)
    return tuple(available)


SUPPORTED_FORMATS: Final[tuple[str, ...]] = _available_formats()
"""Pillow format names :func:`decode_image` accepts, in the order they are tried."""

SUPPORTED_MEDIA_TYPES: Final[frozenset[str]] = frozenset(
    media_type for name in SUPPORTED_FORMATS for media_type in _FORMAT_TABLE[name][2]
)
"""Lower-case ``image/*`` media types :func:`check_media_type` accepts for a raw-body upload."""

_SUPPORTED_FORMATS_TEXT: Final[str] = ", ".join(SUPPORTED_FORMATS)
_SUPPORTED_MEDIA_TYPES_TEXT: Final[str] = ", ".join(sorted(SUPPORTED_MEDIA_TYPES))

# --- Decompression bombs ------------------------------------------------------------------------
#
# Pillow checks ``im.size`` against the global ``Image.MAX_IMAGE_PIXELS`` inside ``Image.open()``
# itself (and again in a few plugins: GIF frame extents, TIFF tiles), i.e. *before* we can look
# at the header: above 2x the limit it raises DecompressionBombError, between 1x and 2x it only
# emits DecompressionBombWarning and carries on. So "our check runs first" cannot keep that
# warning away, and wrapping each call in ``warnings.catch_warnings()`` is not thread-safe (it
# swaps the process-wide filter list). Instead we escalate that one warning category to an
# error, once, at import time: Pillow then raises it like an exception, which decode_image maps
# to ImageTooLargeError together with DecompressionBombError.
#
# Consequently Pillow's global is an upper bound on our cap: the effective cap is
# ``min(max_image_pixels, Image.MAX_IMAGE_PIXELS)`` (see DecodeLimits.effective_max_image_pixels).
# A deployment that wants bigger images raises ``Image.MAX_IMAGE_PIXELS`` once at start-up;
# this module never mutates it, so there is no race between threads building limits.
#
# Residual risk, documented rather than hidden: code that later calls warnings.resetwarnings(),
# or a catch_warnings() block that was entered before this import and exits after it, drops the
# filter. Even then an image in the warning band is still refused (our explicit check uses a cap
# <= Image.MAX_IMAGE_PIXELS); only a warning line would be logged before the 413.


def _escalate_decompression_bomb_warnings() -> None:
    """Make Pillow's DecompressionBombWarning an exception process-wide (idempotent)."""
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


_escalate_decompression_bomb_warnings()

_BOMB_ERRORS: Final = (Image.DecompressionBombError, Image.DecompressionBombWarning)

# What Pillow's decoders raise on corrupt or truncated data (UnidentifiedImageError is an
# OSError and is handled before these). This module never sets ImageFile.LOAD_TRUNCATED_IMAGES
# (Pillow's default is False, and nothing else in the service may change it): a truncated body
# is a client error, not an image with a grey bottom half.
_DECODE_ERRORS: Final = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    struct.error,
    zlib.error,
)

# --- Pixel modes --------------------------------------------------------------------------------

ALPHA_BACKGROUND: Final[int] = 255
"""Grey level (all channels) that transparent pixels are composited over: white.

A transparent PNG or GIF is designed to be shown on a page, and on the (usually white) page a
viewer shows it on, transparent means white. Dropping alpha instead would expose whatever
colour the encoder left in fully transparent pixels (often black, sometimes garbage), which
the model never saw in training. White is also what most preprocessing pipelines choose.
"""

_SIXTEEN_BIT_GRAY_MODES: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_RGB_MODES: Final = frozenset({"RGBA", "RGBa", "PA"})
_ALPHA_GRAY_MODES: Final = frozenset({"LA", "La"})
_CONVERT_TO_RGB_MODES: Final = frozenset({"P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"})

# EXIF Orientation tag value -> the transpose that shows the image upright.
_ORIENTATION_TRANSPOSE: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATIONS_SWAPPING_AXES: Final = frozenset({5, 6, 7, 8})


# --- Public API ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Size limits for one decode. Units: bytes and pixels (width x height)."""

    max_body_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_image_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                msg = f"{name} must be a positive integer, got {value!r}"
                raise ValueError(msg)

    @property
    def effective_max_image_pixels(self) -> int:
        """The pixel cap actually enforced: ``max_image_pixels``, bounded by Pillow's global.

        Pillow refuses anything above ``Image.MAX_IMAGE_PIXELS`` before we see the header (its
        warning is escalated to an error by this module), so a larger ``max_image_pixels`` only
        takes effect once ``Image.MAX_IMAGE_PIXELS`` is raised too (or set to ``None``).
        """
        pillow_max = Image.MAX_IMAGE_PIXELS
        if pillow_max is None:
            return self.max_image_pixels
        return min(self.max_image_pixels, pillow_max)


def check_media_type(content_type: str | None) -> None:
    """Accept a raw-body upload's ``Content-Type`` only if it names a format we decode.

    Parameters after ``;`` are ignored and the comparison is case-insensitive, so
    ``"image/PNG; charset=binary"`` passes. Raises :class:`UnsupportedMediaTypeError` for a
    missing or empty type, a non-``image/*`` type, and ``image/*`` types we do not decode (for
    example ``image/svg+xml``); the message names the type and lists the supported ones.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if not media_type:
        msg = f"missing Content-Type; supported image types: {_SUPPORTED_MEDIA_TYPES_TEXT}"
        raise UnsupportedMediaTypeError(msg)
    if media_type not in SUPPORTED_MEDIA_TYPES:
        shown = media_type if len(media_type) <= 100 else media_type[:100] + "..."
        msg = f"unsupported media type {shown!r}; supported image types: {_SUPPORTED_MEDIA_TYPES_TEXT}"
        raise UnsupportedMediaTypeError(msg)


def decode_image(
    data: bytes, limits: DecodeLimits, *, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """Decode ``data`` into a fully loaded ``"RGB"`` or ``"L"`` image, safely.

    Promises:

    - ``len(data) > limits.max_body_bytes`` -> :class:`PayloadTooLargeError`; empty data,
      unidentifiable data and corrupt or truncated data -> :class:`BadImageError` with a short
      message (no traceback text); the detailed cause is chained and logged at debug level.
    - More pixels than :attr:`DecodeLimits.effective_max_image_pixels`, judged from the header
      before any pixel is decoded, or tripping Pillow's decompression-bomb guard ->
      :class:`ImageTooLargeError`; never a ``DecompressionBombWarning``.
    - With ``draft_size=(width, height)`` a JPEG bigger than it on both sides is decoded with
      DCT scaling to a size still >= ``draft_size`` on both sides (after EXIF rotation).
    - Multi-frame images (GIF, TIFF, WebP, APNG, MPO) yield their first frame.
    - EXIF orientation is applied; unreadable EXIF is ignored.
    - Output mode is ``"L"`` for grayscale sources, ``"RGB"`` otherwise; 16-bit and float
      pixels are rescaled (not clamped) to 8 bits; alpha is composited over
      :data:`ALPHA_BACKGROUND`.
    - The result is a plain, loaded :class:`PIL.Image.Image` that holds no reference to ``data``.
    """
    if len(data) > limits.max_body_bytes:
        msg = f"body is {len(data)} bytes; the limit is {limits.max_body_bytes} bytes"
        raise PayloadTooLargeError(msg)
    if not data:
        raise BadImageError("empty body; expected image data")

    try:
        return _decode(data, limits, draft_size)
    except GreenserveError:
        raise
    except _BOMB_ERRORS as exc:
        logger.debug("decompression-bomb guard tripped: %s", exc)
        msg = f"image dimensions exceed the limit of {limits.effective_max_image_pixels} pixels"
        raise ImageTooLargeError(msg) from exc
    except UnidentifiedImageError as exc:
        msg = f"cannot identify image data; supported formats: {_SUPPORTED_FORMATS_TEXT}"
        raise BadImageError(msg) from exc
    except _DECODE_ERRORS as exc:
        logger.debug("image decode failed", exc_info=True)
        raise BadImageError(f"corrupt or truncated image data ({_short_reason(exc)})") from exc
    except Warning as exc:
        # Only reachable when the process escalates warnings to errors (python -W error, pytest's
        # filterwarnings): Pillow then aborts mid-parse on, e.g., corrupt EXIF, where it would
        # otherwise warn and carry on. The bytes are at fault, so a 400, not a 500.
        logger.debug("image decode aborted by a warning", exc_info=True)
        raise BadImageError(f"image data could not be decoded ({_short_reason(exc)})") from exc


# --- Steps --------------------------------------------------------------------------------------


def _decode(data: bytes, limits: DecodeLimits, draft_size: tuple[int, int] | None) -> Image.Image:
    """The decode pipeline; raises Pillow's exceptions, which :func:`decode_image` maps."""
    with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as opened:
        # Header only so far: nothing decoded, nothing allocated for pixels.
        width, height = opened.size
        max_pixels = limits.effective_max_image_pixels
        if width * height > max_pixels:
            msg = f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
            raise ImageTooLargeError(msg)

        orientation: int | None = None
        if draft_size is not None and isinstance(opened, JpegImagePlugin.JpegImageFile):
            # JPEG reads EXIF from the APP1 header, so this does not trigger a decode.
            orientation = _exif_orientation(opened)
            _apply_jpeg_draft(opened, draft_size, orientation)

        # The first frame is the current one after open(); load() decodes it (and only it).
        opened.load()
        if orientation is None:
            # After load(): PNG may keep its EXIF in chunks after the image data.
            orientation = _exif_orientation(opened)

        image: Image.Image = opened
        method = _ORIENTATION_TRANSPOSE.get(orientation)
        if method is not None:
            image = image.transpose(method)
        image = _normalise_mode(image)
        if image is opened:
            # Hand back a plain Image with its own pixel buffer, detached from the parser.
            image = opened.copy()
    return image


def _apply_jpeg_draft(
    opened: JpegImagePlugin.JpegImageFile, draft_size: tuple[int, int], orientation: int
) -> None:
    """Ask libjpeg for DCT scaling (1/2, 1/4, 1/8) that keeps the image >= ``draft_size``."""
    target_w, target_h = draft_size
    if orientation in _ORIENTATIONS_SWAPPING_AXES:
        # draft_size is meant for the upright image; the stored one is rotated by 90 degrees.
        target_w, target_h = target_h, target_w
    if target_w <= 0 or target_h <= 0:
        return
    if opened.width > target_w and opened.height > target_h:
        # "L" keeps a grayscale JPEG grayscale; "RGB" leaves colour (and CMYK) modes unchanged.
        opened.draft("L" if opened.mode == "L" else "RGB", (target_w, target_h))


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation (1-8), or 1 when absent, invalid or unreadable.

    Broken EXIF is common in the wild (truncated APP1 segments, bad offsets from editing tools);
    it must not cost the client a decodable image, so any failure here is logged and ignored.
    """
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        logger.debug("ignoring unreadable EXIF data", exc_info=True)
        return 1
    if isinstance(value, int) and value in _ORIENTATION_TRANSPOSE:
        return value
    return 1


def _normalise_mode(image: Image.Image) -> Image.Image:
    """Return ``image`` in mode ``"L"`` (grayscale sources) or ``"RGB"`` (everything else).

    May return ``image`` itself when it already is ``"L"`` or ``"RGB"`` without transparency.
    """
    mode = image.mode
    has_transparency = "transparency" in image.info
    if mode in ("L", "RGB") and not has_transparency:
        return image
    if mode == "1":
        return image.convert("L")
    if mode in _SIXTEEN_BIT_GRAY_MODES:
        return _sixteen_bit_to_l(image)
    if mode == "F":
        return _float_to_l(image)
    if mode in _ALPHA_GRAY_MODES or (mode == "L" and has_transparency):
        # "La" (premultiplied) and "L" + tRNS colour key both convert to straight "LA".
        return _composite_over_background(image if mode == "LA" else image.convert("LA"))
    if mode in _ALPHA_RGB_MODES or (mode in ("P", "RGB") and has_transparency):
        # A palette's transparency (index or per-entry alpha) and an RGB tRNS colour key are
        # applied by Pillow's conversion to "RGBA".
        return _composite_over_background(image if mode == "RGBA" else image.convert("RGBA"))
    if mode in _CONVERT_TO_RGB_MODES:
        # Includes CMYK (Pillow's conversion), and palette images even when the palette is all
        # grey: "RGB" is always a valid output and saves inspecting the palette.
        return image.convert("RGB")
    msg = f"unsupported pixel mode {mode!r}"
    raise BadImageError(msg)


def _composite_over_background(image: Image.Image) -> Image.Image:
    """Blend an ``"LA"`` or ``"RGBA"`` image over :data:`ALPHA_BACKGROUND`; drops the alpha."""
    base_mode = "L" if image.mode == "LA" else "RGB"
    fill: int | tuple[int, int, int] = ALPHA_BACKGROUND if base_mode == "L" else (ALPHA_BACKGROUND,) * 3
    background = Image.new(base_mode, image.size, fill)
    background.paste(image.convert(base_mode), mask=image.getchannel("A"))
    return background


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """Rescale 16-bit grey (``"I;16*"``; ``"I"`` read as 0..65535) to 8 bits: round(v / 257).

    Pillow's own ``convert("L")`` clamps instead, which turns every value above 255 white.
    """
    values = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
    # Integer round-half-up of v / 257 (exact: 257 is odd, so no value is exactly half-way).
    values += 128
    values //= 257
    return Image.fromarray(values.astype(np.uint8))


def _float_to_l(image: Image.Image) -> Image.Image:
    """Rescale float grey to 8 bits: values in 0..1 when the maximum is <= 1, else 0..255.

    NaN reads as 0; everything is clipped to 0..255 after scaling.
    """
    values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
    if values.size == 0 or float(values.max()) <= 1.0:
        values = values * np.float32(255.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _short_reason(exc: BaseException) -> str:
    """One line, at most 120 characters, naming what went wrong (no traceback, no paths)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return reason if len(reason) <= 120 else reason[:117] + "..."
