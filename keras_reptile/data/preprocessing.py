"""How an image file becomes a model input, shared by the dataset readers and the serving client.

Omniglot images are 0/1 bits (1 for the background) resized to 28x28 as the official
openai/supervised-reptile code does; Mini-ImageNet images are RGB, resized with Pillow's BILINEAR
filter. `load_image` prepares one file exactly as the training images of a model are prepared.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

OMNIGLOT_IMAGE_SIZE = 28

_ImagePath = str | os.PathLike


def omniglot_bits(image: Image.Image) -> np.ndarray:
    """Resizes an Omniglot image as the official code does.

    Images that are not 1-bit are first thresholded: gray levels above 127 become 1. Pillow
    always resamples 1-bit images with NEAREST, as `Image.open(png).resize((28, 28))` does in the
    official code, so the result reproduces its pixels.

    Args:
        image: PIL image of any mode.

    Returns:
        uint8 array `[28, 28]` of 0/1 values, 1 for the background.
    """
    if image.mode != "1":
        image = Image.fromarray(np.asarray(image.convert("L")) > 127)
    return np.asarray(image.resize((OMNIGLOT_IMAGE_SIZE, OMNIGLOT_IMAGE_SIZE)), dtype=np.uint8)


def read_rgb(path: _ImagePath, size: int) -> np.ndarray:
    """Reads an image file as RGB, resized with BILINEAR if it is not `size` x `size`.

    Args:
        path: str or path-like. The image file.
        size: int. Height and width of the result.

    Returns:
        uint8 array `[size, size, 3]`.
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive int. Received: size={size!r}")
    with _open(path) as image:
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def load_image(path: _ImagePath, input_shape: Sequence[int]) -> np.ndarray:
    """Reads an image file prepared exactly as the training images of a model.

    Args:
        path: str or path-like. The image file (PNG for Omniglot, any format Pillow reads).
        input_shape: sequence of ints. The model's input shape without the batch dimension:
            `(28, 28, 1)` for Omniglot models or `(N, N, 3)` for square RGB models.

    Returns:
        float32 array of shape `input_shape`: 0/1 bits (`omniglot_bits`) for `(28, 28, 1)`,
        `read_rgb(path, N) / 255` for `(N, N, 3)`.
    """
    shape = tuple(input_shape)
    if shape == (OMNIGLOT_IMAGE_SIZE, OMNIGLOT_IMAGE_SIZE, 1):
        with _open(path) as image:
            return omniglot_bits(image).astype(np.float32)[..., None]
    if len(shape) == 3 and shape[2] == 3 and shape[0] == shape[1] and shape[0] > 0:
        return read_rgb(path, shape[0]).astype(np.float32) * np.float32(1 / 255)
    raise ValueError(
        "Image files can only be prepared for Omniglot-shaped (28, 28, 1) and square RGB "
        f"(N, N, 3) model inputs; send arrays (.npz) instead. Received: input_shape={shape}, "
        f"path={path}"
    )


@contextlib.contextmanager
def _open(path: _ImagePath) -> Iterator[Image.Image]:
    """Opens an image; a missing or undecodable file raises ValueError naming `path`."""
    try:
        with Image.open(path) as image:
            yield image
    except FileNotFoundError as e:
        raise ValueError(f"The image file does not exist. Received: path={path}") from e
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"Cannot read the image file ({e}). Received: path={path}") from e
