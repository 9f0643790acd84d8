"""Tests for service.imaging: every image is built in memory with Pillow or numpy."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageFile

from service import imaging
from service.errors import (
    BadImageError,
    ImageTooLargeError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from service.imaging import (
    ALPHA_BACKGROUND,
    SUPPORTED_FORMATS,
    SUPPORTED_MEDIA_TYPES,
    DecodeLimits,
    check_media_type,
    decode_image,
)

LIMITS = DecodeLimits()
SIZE = (37, 23)  # non-square and odd, so a swapped or rounded size shows


# --- helpers ------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` 8-bit grey pixels, with (almost) no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def two_colour_rgb(size: tuple[int, int] = SIZE) -> Image.Image:
    """Left half red, right half blue: few colours (GIF-exact) and orientation-revealing."""
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(pixels)


def gradient_l(size: tuple[int, int] = SIZE) -> Image.Image:
    width, height = size
    return Image.fromarray((np.arange(width * height) % 256).astype(np.uint8).reshape(height, width))


def pixels(image: Image.Image) -> np.ndarray[Any, Any]:
    return np.asarray(image).astype(np.int32)


def fail_if_called(*args: object, **kwargs: object) -> None:
    pytest.fail("pixel data was decoded although the header alone should have been refused")


def requires(fmt: str) -> None:
    if fmt not in SUPPORTED_FORMATS:
        pytest.skip(f"this Pillow has no {fmt} support")


# --- formats ------------------------------------------------------------------------------------


def test_supported_formats_are_in_process_decoders_only() -> None:
    assert {"JPEG", "PNG", "GIF", "BMP", "TIFF", "PPM"} <= set(SUPPORTED_FORMATS)
    assert set(SUPPORTED_FORMATS) <= {"JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM"}
    assert {"image/jpeg", "image/jpg", "image/png", "image/x-portable-pixmap"} <= SUPPORTED_MEDIA_TYPES
    assert all(media_type == media_type.lower() for media_type in SUPPORTED_MEDIA_TYPES)


@pytest.mark.parametrize(
    ("fmt", "make", "params", "expected_mode"),
    [
        ("PNG", two_colour_rgb, {}, "RGB"),
        ("PNG", gradient_l, {}, "L"),
        ("GIF", two_colour_rgb, {}, "RGB"),
        ("BMP", two_colour_rgb, {}, "RGB"),
        ("BMP", lambda: gradient_l().convert("1"), {}, "L"),
        ("TIFF", two_colour_rgb, {}, "RGB"),
        ("TIFF", gradient_l, {"compression": "tiff_deflate"}, "L"),
        ("WEBP", two_colour_rgb, {"lossless": True}, "RGB"),
        ("PPM", two_colour_rgb, {}, "RGB"),
        ("PPM", gradient_l, {}, "L"),
    ],
)
def test_lossless_round_trip(
    fmt: str, make: Callable[[], Image.Image], params: dict[str, Any], expected_mode: str
) -> None:
    requires(fmt)
    original = make()

    decoded = decode_image(encode(original, fmt, **params), LIMITS)

    assert decoded.size == SIZE
    assert decoded.mode == expected_mode
    np.testing.assert_array_equal(pixels(decoded), pixels(original.convert(expected_mode)))


@pytest.mark.parametrize(("make", "expected_mode"), [(two_colour_rgb, "RGB"), (gradient_l, "L")])
def test_jpeg_round_trip(make: Callable[[], Image.Image], expected_mode: str) -> None:
    original = make()

    decoded = decode_image(encode(original, "JPEG", quality=95), LIMITS)

    assert decoded.size == SIZE
    assert decoded.mode == expected_mode
    assert np.abs(pixels(decoded) - pixels(original)).mean() < 8


def test_result_is_a_loaded_plain_image_detached_from_the_parser() -> None:
    decoded = decode_image(encode(two_colour_rgb(), "JPEG"), LIMITS)

    assert type(decoded) is Image.Image
    assert not isinstance(decoded, ImageFile.ImageFile)
    assert decoded.getpixel((0, 0)) is not None  # pixels readable with no file behind them


# --- bad bodies ---------------------------------------------------------------------------------


def test_body_over_the_limit_is_payload_too_large() -> None:
    data = encode(two_colour_rgb(), "PNG")

    with pytest.raises(PayloadTooLargeError) as caught:
        decode_image(data, DecodeLimits(max_body_bytes=len(data) - 1))

    assert str(len(data)) in caught.value.message
    assert str(len(data) - 1) in caught.value.message


def test_body_exactly_at_the_limit_is_accepted() -> None:
    data = encode(two_colour_rgb(), "PNG")

    assert decode_image(data, DecodeLimits(max_body_bytes=len(data))).size == SIZE


def test_empty_body_is_bad_image() -> None:
    with pytest.raises(BadImageError):
        decode_image(b"", LIMITS)


def test_random_bytes_are_bad_image() -> None:
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()

    with pytest.raises(BadImageError, match="cannot identify image data; supported formats: JPEG, PNG"):
        decode_image(data, LIMITS)


def test_formats_outside_the_allow_list_are_not_identified() -> None:
    ico = encode(two_colour_rgb((16, 16)), "ICO")
    assert Image.open(io.BytesIO(ico)).format == "ICO"  # Pillow itself would happily open it

    with pytest.raises(BadImageError, match="cannot identify"):
        decode_image(ico, LIMITS)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_bad_image(fmt: str) -> None:
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = encode(noise, fmt)

    with pytest.raises(BadImageError, match="corrupt or truncated") as caught:
        decode_image(data[: len(data) // 2], LIMITS)

    assert "Traceback" not in caught.value.message
    assert len(caught.value.message) < 200
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_header_is_bad_image() -> None:
    # A valid signature followed by an IHDR whose CRC is wrong.
    data = bytearray(png_header_only(10, 10))
    data[29] ^= 0xFF

    with pytest.raises(BadImageError):
        decode_image(bytes(data), LIMITS)


# --- pixel caps and decompression bombs ---------------------------------------------------------


def test_header_over_the_pixel_cap_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile.ImageFile, "load", fail_if_called)
    data = png_header_only(8000, 6000)  # 48 MP: over our 40 MP default, under Pillow's ~89 MP
    assert len(data) < 100

    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(data, LIMITS)

    assert "8000x6000" in caught.value.message
    assert "40000000" in caught.value.message


def test_small_custom_pixel_cap() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")

    with pytest.raises(ImageTooLargeError):
        decode_image(data, DecodeLimits(max_image_pixels=100 * 100 - 1))
    assert decode_image(data, DecodeLimits(max_image_pixels=100 * 100)).size == (100, 100)


@pytest.mark.parametrize(
    "side",
    [
        10_000,  # 100 MP: between 1x and 2x Image.MAX_IMAGE_PIXELS, where Pillow only warns
        20_000,  # 400 MP: over 2x, where Pillow raises DecompressionBombError
    ],
)
def test_pillow_bomb_guard_is_an_error_never_a_warning(monkeypatch: pytest.MonkeyPatch, side: int) -> None:
    monkeypatch.setattr(ImageFile.ImageFile, "load", fail_if_called)
    assert Image.MAX_IMAGE_PIXELS is not None
    assert side * side > Image.MAX_IMAGE_PIXELS
    limits = DecodeLimits(max_image_pixels=10**9)  # our own cap would let it through

    # Outside pytest's "error" filter, as in production: record every warning.
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        imaging._escalate_decompression_bomb_warnings()  # what importing the module did
        with pytest.raises(ImageTooLargeError, match=str(Image.MAX_IMAGE_PIXELS)):
            decode_image(png_header_only(side, side), limits)

    assert [w.message for w in caught_warnings] == []


def test_effective_pixel_cap_is_bounded_by_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert DecodeLimits(max_image_pixels=500).effective_max_image_pixels == 500
    assert DecodeLimits(max_image_pixels=5000).effective_max_image_pixels == 1000

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert DecodeLimits(max_image_pixels=5000).effective_max_image_pixels == 5000


@pytest.mark.parametrize(
    "kwargs", [{"max_body_bytes": 0}, {"max_image_pixels": -1}, {"max_body_bytes": True}]
)
def test_limits_must_be_positive_integers(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DecodeLimits(**kwargs)


def test_decoding_is_safe_from_many_threads() -> None:
    good = encode(two_colour_rgb(), "PNG")
    bomb = png_header_only(10_000, 10_000)

    def attempt(data: bytes) -> str:
        try:
            return decode_image(data, LIMITS).mode
        except ImageTooLargeError:
            return "too large"

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(attempt, [good, bomb] * 16))

    assert results == ["RGB", "too large"] * 16


# --- orientation, frames, draft -----------------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored rotated: shown after a 90-degree clockwise turn
    data = encode(two_colour_rgb((40, 20)), "JPEG", exif=exif, quality=95)

    decoded = decode_image(data, LIMITS)

    assert decoded.size == (20, 40)
    red, blue = decoded.getpixel((10, 5)), decoded.getpixel((10, 35))
    assert isinstance(red, tuple)
    assert isinstance(blue, tuple)
    assert red[0] > 200 and red[2] < 60  # the stored left (red) half is now on top
    assert blue[2] > 200 and blue[0] < 60


def test_unreadable_exif_does_not_fail_the_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_getexif(self: Image.Image) -> Image.Exif:
        raise SyntaxError("not a TIFF file (header b'garbage' not valid)")

    monkeypatch.setattr(Image.Image, "getexif", broken_getexif)

    decoded = decode_image(encode(two_colour_rgb(), "JPEG"), LIMITS)

    assert decoded.size == SIZE


GARBAGE_EXIF = b"Exif\x00\x00II*\x00\xff\xff\xff\x7fgarbage"


def test_garbage_exif_segment_does_not_fail_the_decode() -> None:
    data = encode(two_colour_rgb(), "JPEG", exif=GARBAGE_EXIF)

    # Pillow's JPEG parser warns about the EXIF segment (a UserWarning, as in production) and
    # carries on; the decode succeeds.
    with pytest.warns(UserWarning, match="EXIF"):
        decoded = decode_image(data, LIMITS)

    assert decoded.size == SIZE


@pytest.mark.filterwarnings("error")
def test_pillow_warning_escalated_to_an_error_is_a_bad_image_not_a_crash() -> None:
    data = encode(two_colour_rgb(), "JPEG", exif=GARBAGE_EXIF)

    with pytest.raises(BadImageError, match="could not be decoded"):
        decode_image(data, LIMITS)


def test_multi_frame_gif_yields_the_first_frame() -> None:
    frames = [Image.new("RGB", SIZE, colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3

    decoded = decode_image(data, LIMITS)

    assert decoded.mode == "RGB"
    assert decoded.size == SIZE
    assert decoded.getpixel((5, 5)) == (255, 0, 0)


def test_multi_page_tiff_yields_the_first_page() -> None:
    pages = [Image.new("L", SIZE, 10), Image.new("L", SIZE, 200)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])

    assert decode_image(data, LIMITS).getpixel((0, 0)) == 10


def test_jpeg_draft_decodes_big_photos_small_but_not_below_the_request() -> None:
    data = encode(Image.new("RGB", (4000, 3000), (10, 120, 200)), "JPEG")

    decoded = decode_image(data, LIMITS, draft_size=(224, 224))

    assert decoded.mode == "RGB"
    assert 224 <= decoded.width < 4000
    assert 224 <= decoded.height < 3000
    assert decoded.size == (500, 375)  # 1/8 DCT scaling


def test_jpeg_draft_size_refers_to_the_upright_image() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    data = encode(Image.new("L", (4000, 1000), 90), "JPEG", exif=exif)

    decoded = decode_image(data, LIMITS, draft_size=(224, 800))

    # Upright 1000x4000; asking >= 224x800 allows 1/4 scaling (a stored-axes check would allow none).
    assert decoded.size == (250, 1000)
    assert decoded.mode == "L"


def test_draft_is_ignored_for_small_jpegs_and_other_formats() -> None:
    assert decode_image(encode(two_colour_rgb(), "JPEG"), LIMITS, draft_size=(224, 224)).size == SIZE
    big_png = encode(Image.new("L", (1000, 1000)), "PNG")
    assert decode_image(big_png, LIMITS, draft_size=(224, 224)).size == (1000, 1000)


# --- pixel modes --------------------------------------------------------------------------------


def palette_image_with_transparent_index() -> Image.Image:
    image = Image.new("P", (4, 1), 0)
    image.putpalette([255, 0, 0, 0, 0, 0] + [0, 0, 0] * 254)  # index 0 red, index 1 black
    image.putpixel((2, 0), 1)
    image.putpixel((3, 0), 1)
    return image


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_is_composited_over_white(fmt: str) -> None:
    data = encode(palette_image_with_transparent_index(), fmt, transparency=1)

    decoded = decode_image(data, LIMITS)

    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0)) == (255, 0, 0)
    white = (ALPHA_BACKGROUND,) * 3
    assert decoded.getpixel((2, 0)) == white  # black but transparent: white, not black
    assert decoded.getpixel((3, 0)) == white


def test_rgba_is_composited_over_white() -> None:
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (255, 0, 0, 128))  # half-transparent red
    image.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black
    image.putpixel((2, 0), (0, 0, 255, 255))  # opaque blue

    decoded = decode_image(encode(image, "PNG"), LIMITS)

    assert decoded.mode == "RGB"
    half = np.array(decoded.getpixel((0, 0)))
    assert np.abs(half - (255, 127, 127)).max() <= 1
    assert decoded.getpixel((1, 0)) == (255, 255, 255)
    assert decoded.getpixel((2, 0)) == (0, 0, 255)


def test_la_becomes_l_composited_over_white() -> None:
    image = Image.new("LA", (3, 1))
    image.putpixel((0, 0), (0, 0))
    image.putpixel((1, 0), (0, 255))
    image.putpixel((2, 0), (100, 128))

    decoded = decode_image(encode(image, "PNG"), LIMITS)

    assert decoded.mode == "L"
    assert decoded.getpixel((0, 0)) == 255
    assert decoded.getpixel((1, 0)) == 0
    assert abs(pixels(decoded)[0, 2] - round(100 * 128 / 255 + 255 * 127 / 255)) <= 1


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour() -> None:
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)  # red in CMYK
    assert Image.open(io.BytesIO(data)).mode == "CMYK"

    decoded = decode_image(data, LIMITS)

    assert decoded.mode == "RGB"
    assert np.abs(pixels(decoded)[16, 16] - (255, 0, 0)).max() <= 10


def test_sixteen_bit_png_is_rescaled_not_clamped() -> None:
    source = Image.fromarray(np.array([[65535, 32896, 0, 256]], dtype=np.uint16))
    data = encode(source, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"

    decoded = decode_image(data, LIMITS)

    assert decoded.mode == "L"
    assert pixels(decoded).tolist() == [[255, 128, 0, 1]]  # Pillow's convert("L") gives 255 for 256


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([[0.0, 0.5, 1.0, -0.2]], [[0, 128, 255, 0]]),  # max <= 1: a 0..1 image
        ([[0.0, 127.6, 255.0, 300.0]], [[0, 128, 255, 255]]),  # otherwise 0..255, clipped
    ],
)
def test_float_tiff_is_scaled_to_eight_bits(values: list[list[float]], expected: list[list[int]]) -> None:
    data = encode(Image.fromarray(np.array(values, dtype=np.float32)), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"

    decoded = decode_image(data, LIMITS)

    assert decoded.mode == "L"
    assert pixels(decoded).tolist() == expected


@pytest.mark.parametrize(
    ("mode", "colour", "expected_mode", "expected"),
    [
        ("1", 1, "L", 255),
        ("I", 65535, "L", 255),
        ("I", -5, "L", 0),
        ("I", 70000, "L", 255),
        ("I;16B", 32896, "L", 128),
        ("La", (100, 255), "L", 100),
        ("RGBa", (0, 0, 0, 0), "RGB", (255, 255, 255)),
        ("PA", (0, 0), "RGB", (255, 255, 255)),
        ("RGBX", (1, 2, 3, 0), "RGB", (1, 2, 3)),
        ("HSV", (0, 255, 255), "RGB", (255, 0, 0)),
        ("YCbCr", (128, 128, 128), "RGB", (128, 128, 128)),
        ("LAB", (255, 128, 128), "RGB", None),
        ("P", 0, "RGB", (0, 0, 0)),
    ],
)
def test_every_mode_normalises_to_rgb_or_l(
    mode: str, colour: float | tuple[int, ...], expected_mode: str, expected: object
) -> None:
    normalised = imaging._normalise_mode(Image.new(mode, (2, 2), colour))

    assert normalised.mode == expected_mode
    if expected is not None:
        assert normalised.getpixel((0, 0)) == expected


@pytest.mark.parametrize(("mode", "key"), [("L", 7), ("RGB", (1, 2, 3))])
def test_colour_key_transparency_is_composited_over_white(mode: str, key: int | tuple[int, int, int]) -> None:
    image = Image.new(mode, (2, 1), key)
    image.putpixel((1, 0), 0 if mode == "L" else (0, 0, 0))
    data = encode(image, "PNG", transparency=key)

    decoded = decode_image(data, LIMITS)

    assert decoded.mode == mode
    assert decoded.getpixel((0, 0)) == (255 if mode == "L" else (255, 255, 255))
    assert decoded.getpixel((1, 0)) == (0 if mode == "L" else (0, 0, 0))


# --- media types --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["image/png", "image/PNG", "IMAGE/JPEG", "image/jpg", "image/png; charset=binary", " image/gif ;q=1"],
)
def test_check_media_type_accepts_supported_images(content_type: str) -> None:
    check_media_type(content_type)


@pytest.mark.parametrize(
    ("content_type", "named"),
    [
        ("text/plain", "text/plain"),
        ("application/json; charset=utf-8", "application/json"),
        ("image/svg+xml", "image/svg+xml"),
        ("image/x-icon", "image/x-icon"),
        (None, "missing"),
        ("", "missing"),
        ("; charset=utf-8", "missing"),
    ],
)
def test_check_media_type_rejects_others(content_type: str | None, named: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        check_media_type(content_type)

    assert named in caught.value.message
    assert "image/png" in caught.value.message
    assert caught.value.status_code == 415
