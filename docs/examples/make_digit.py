"""Writes ``docs/examples/digit.png``, the README's sample image: a held-out 7 from scikit-learn's
digits (the split the embedded model never trained on), 8×8 pixels scaled ×4 without smoothing.

Reproducible: ``python docs/examples/make_digit.py`` (needs scikit-learn, the ``train`` extra)
writes the same bytes every time; ``tests/service/test_readme.py`` checks that it does.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from PIL import Image

DIGIT = 7
SCALE = 4
OUT = Path(__file__).resolve().parent / "digit.png"


def digit_png(digit: int = DIGIT, scale: int = SCALE) -> bytes:
    """The first held-out sample of ``digit`` as a grayscale PNG, each pixel a ``scale``×``scale`` block."""
    from service import digits

    split = digits.load_split()
    index = int((split.y_test == digit).nonzero()[0][0])
    image = Image.fromarray(digits.to_png_pixels(split.x_test[index]))  # uint8, 2-D: mode "L"
    image = image.resize((8 * scale, 8 * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


if __name__ == "__main__":
    sys.path.insert(0, str(OUT.parents[2]))  # the repository root, for `service`
    OUT.write_bytes(digit_png())
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
