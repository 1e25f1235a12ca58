"""How an image file becomes a model input, shared by the dataset readers and the serving client.

Omniglot images are 0/1 bits (1 for the background) resized to 28x28 as the official
openai/supervised-reptile code does; Mini-ImageNet images are RGB, resized with Pillow's BILINEAR
filter; images of the user's own datasets (`image_folder`, `tfds_dataset`) are gray or RGB,
resized the same way. `stored_pixels` is that one decode path for every image a dataset stores,
and `load_image` prepares one file exactly as the training images of a model are prepared.
`strokes_to_image` turns pen strokes (the browser demo's drawings) into an Omniglot-like image; the
demo's `serving/demo/demo.js` implements the same arithmetic and is tested against it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

OMNIGLOT_IMAGE_SIZE = 28
# Drawn characters are scaled so that their ink's bounding box has this longer side, in pixels of
# a 28x28 image: the median over the 24,000 images of the 1,200 training characters (official
# split, seed 0) is 18 pixels (mean 17.8; 10th-90th percentile 13-22), as
# `python -m serving.demo.make_data --data_dir=DIR` prints.
STROKE_INK_EXTENT = 18.0
# Pen width, in pixels of a 28x28 image. Omniglot strokes are 4.3 to 5 pixels wide at 105x105
# (twice area over perimeter, and the median of each ink pixel's shorter horizontal or vertical
# run: the two estimates bound the width from below and above), 4.7 / 3.75 = 1.25 at 28x28.
STROKE_PEN_WIDTH = 1.25

Strokes = Sequence[Sequence[Sequence[float]]]

_ImagePath = str | os.PathLike | Image.Image


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


def strokes_to_image(strokes: Strokes, size: int = OMNIGLOT_IMAGE_SIZE) -> np.ndarray:
    """Rasterizes pen strokes as an Omniglot image looks: centred, scaled, 0/1 bits.

    The rule, which `serving/demo/demo.js` repeats operation for operation (float64 arithmetic,
    so both give the same bits): take the bounding box of the strokes' points; scale them, keeping
    the aspect ratio, so that the box's longer side spans `STROKE_INK_EXTENT - STROKE_PEN_WIDTH`
    pixels (the ink, pen included, then spans `STROKE_INK_EXTENT`) and put the box's centre at
    the image's centre; a pixel is ink when its centre lies within `STROKE_PEN_WIDTH / 2` of a
    stroke's polyline (a one-point stroke is a dot). This samples a pen line at pixel centres as
    Omniglot's 28x28 images sample the 105x105 drawings (NEAREST). Both constants are given for a
    28x28 image and scale with `size`. A drawing whose points all coincide has no extent: it
    becomes a dot at the centre.

    Args:
        strokes: sequence of strokes, each a sequence of `(x, y)` points (any unit; y downwards,
            as on a screen). At least one point in all.
        size: int. Height and width of the result.

    Returns:
        uint8 array `[size, size]` of 0/1 values, 1 for the background.
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive int. Received: size={size!r}")
    lines = []
    for stroke in strokes:
        points = np.asarray(stroke, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
            raise ValueError(
                "Each stroke must be a non-empty sequence of finite (x, y) points. "
                f"Received: stroke={str(stroke)[:200]}"
            )
        lines.append(points)
    if not lines:
        raise ValueError(f"strokes must hold at least one point. Received: strokes={strokes!r}")
    everything = np.concatenate(lines)
    x0, y0 = (float(v) for v in everything.min(axis=0))
    x1, y1 = (float(v) for v in everything.max(axis=0))
    per_pixel = size / OMNIGLOT_IMAGE_SIZE
    extent, pen = STROKE_INK_EXTENT * per_pixel, STROKE_PEN_WIDTH * per_pixel
    longest = max(x1 - x0, y1 - y0)
    scale = (extent - pen) / longest if longest > 0 else 0.0
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, size / 2
    radius2 = (pen / 2) * (pen / 2)
    centres = np.arange(size, dtype=np.float64) + 0.5
    px, py = centres[None, :], centres[:, None]
    ink = np.zeros((size, size), dtype=bool)
    for points in lines:
        xs = (points[:, 0] - cx) * scale + half
        ys = (points[:, 1] - cy) * scale + half
        for i in range(max(len(points) - 1, 1)):  # segment i joins point i to point i + 1
            j = min(i + 1, len(points) - 1)
            ax, ay, bx, by = float(xs[i]), float(ys[i]), float(xs[j]), float(ys[j])
            dx, dy = bx - ax, by - ay
            length2 = dx * dx + dy * dy
            t = ((px - ax) * dx + (py - ay) * dy) / length2 if length2 > 0 else np.zeros(1)
            t = np.minimum(np.maximum(t, 0.0), 1.0)
            ex, ey = px - (ax + t * dx), py - (ay + t * dy)
            ink |= ex * ex + ey * ey <= radius2
    return (~ink).astype(np.uint8)


def read_rgb(path: _ImagePath, size: int) -> np.ndarray:
    """Reads an image file as RGB, resized with BILINEAR if it is not `size` x `size`.

    Args:
        path: str or path-like. The image file.
        size: int. Height and width of the result.

    Returns:
        uint8 array `[size, size, 3]`.
    """
    _check_size(size)
    with open_image(path) as image:
        return resized_pixels(image, size, 3)


def resized_pixels(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """A PIL image as gray (`channels=1`) or RGB (`channels=3`) pixels, BILINEAR-resized to
    `size` x `size` if it is not that size already.

    Args:
        image: PIL image of any mode and size.
        size: int. Height and width of the result.
        channels: int. 1 (Pillow's "L" conversion) or 3 ("RGB").

    Returns:
        uint8 array `[size, size, channels]`.
    """
    _check_size(size)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels!r}")
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(size, size, channels)


def stored_pixels(image: Image.Image, input_shape: Sequence[int]) -> np.ndarray:
    """A PIL image as the uint8 pixels a dataset of `input_shape` stores: Omniglot's 0/1 bits
    (`omniglot_bits`) for `(28, 28, 1)`, else `resized_pixels` for square `(N, N, 1)` or
    `(N, N, 3)`. Multiply by `pixel_scale(input_shape)` for the model input.

    Args:
        image: PIL image of any mode and size.
        input_shape: sequence of ints. `(height, width, channels)`, height equal to width.

    Returns:
        uint8 array of shape `input_shape`.
    """
    shape = _checked_shape(input_shape)
    if shape == (OMNIGLOT_IMAGE_SIZE, OMNIGLOT_IMAGE_SIZE, 1):
        return omniglot_bits(image)[..., None]
    return resized_pixels(image, shape[0], shape[2])


def pixel_scale(input_shape: Sequence[int]) -> float:
    """The factor from `stored_pixels` to model inputs: 1.0 for Omniglot's bits, else 1/255."""
    shape = _checked_shape(input_shape)
    return 1.0 if shape == (OMNIGLOT_IMAGE_SIZE, OMNIGLOT_IMAGE_SIZE, 1) else 1 / 255


def load_image(path: _ImagePath, input_shape: Sequence[int]) -> np.ndarray:
    """Reads an image file prepared exactly as the training images of a model.

    Args:
        path: str or path-like. The image file (PNG for Omniglot, any format Pillow reads), or
            a PIL image.
        input_shape: sequence of ints. The model's input shape without the batch dimension:
            `(28, 28, 1)` for Omniglot models, `(N, N, 3)` for square RGB models or `(N, N, 1)`
            for other square gray models.

    Returns:
        float32 array of shape `input_shape`: 0/1 bits (`omniglot_bits`) for `(28, 28, 1)`,
        `resized_pixels(image, N, channels) / 255` otherwise (`read_rgb(path, N) / 255` for RGB).
    """
    shape = _checked_shape(input_shape, path)
    with open_image(path) as image:
        pixels = stored_pixels(image, shape)
    return pixels.astype(np.float32) * np.float32(pixel_scale(shape))


def _check_size(size) -> None:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive int. Received: size={size!r}")


def _checked_shape(input_shape: Sequence[int], path: _ImagePath | None = None) -> tuple:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3 and shape[2] in (1, 3) and shape[0] == shape[1] and shape[0] > 0:
        return shape
    where = "" if path is None else f", path={path}"
    raise ValueError(
        "Image files can only be prepared for square gray (N, N, 1) and RGB (N, N, 3) model "
        f"inputs; send arrays (.npz) instead. Received: input_shape={shape}{where}"
    )


@contextlib.contextmanager
def open_image(path: _ImagePath) -> Iterator[Image.Image]:
    """Opens an image (a PIL image is used as is); a missing or undecodable file raises
    ValueError naming `path`."""
    if isinstance(path, Image.Image):
        yield path
        return
    try:
        with Image.open(path) as image:
            yield image
    except FileNotFoundError as e:
        raise ValueError(f"The image file does not exist. Received: path={path}") from e
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"Cannot read the image file ({e}). Received: path={path}") from e
