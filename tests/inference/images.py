"""Images the inference tests start from."""

from __future__ import annotations

import numpy as np
from PIL import Image


def gradient(size: int) -> Image.Image:
    """A smooth colour gradient, `size` pixels square: far from what noise decodes to."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    array = np.stack(
        [
            np.add.outer(ramp, ramp) / 2,
            np.tile(ramp, (size, 1)),
            255 - ramp[:, None].repeat(size, 1),
        ],
        -1,
    )
    return Image.fromarray(array.astype(np.uint8))
