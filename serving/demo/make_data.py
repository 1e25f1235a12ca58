"""Writes the demo's Omniglot drawings and prints the ink extent `strokes_to_image` scales to.

The drawings are 20 characters of the Reptile paper's Omniglot test split (the 423 characters
left after the official seed-0 shuffle), 6 drawings each, picked with `numpy.random.default_rng(0)`
and stored as hex strings of their 28x28 bits (`encode_bits`). They come from the official zips:

    python -m serving.demo.make_data --data_dir=DIR   # DIR: images_background.zip, ...
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from keras_reptile.data.omniglot import load_omniglot
from keras_reptile.data.preprocessing import OMNIGLOT_IMAGE_SIZE, STROKE_INK_EXTENT

DATA_FILE = pathlib.Path(__file__).parent / "data" / "omniglot_test.json"
CHARACTERS, DRAWINGS, SEED = 20, 6, 0


def encode_bits(image: np.ndarray) -> str:
    """A 0/1 image as hex digits: its bits in row-major order, 4 to a digit, first bit highest."""
    bits = np.asarray(image).reshape(-1)
    if bits.size % 4 or not np.isin(bits, (0, 1)).all():
        raise ValueError(
            f"encode_bits takes 0/1 values, a multiple of 4 of them. Received: image.shape="
            f"{np.shape(image)}, values={np.unique(bits)[:5].tolist()}"
        )
    digits = bits.reshape(-1, 4).astype(np.uint8) @ np.array([8, 4, 2, 1], np.uint8)
    return "".join(f"{d:x}" for d in digits)


def decode_bits(text: str, size: int = OMNIGLOT_IMAGE_SIZE) -> np.ndarray:
    """The uint8 `[size, size]` image `encode_bits` wrote."""
    if len(text) * 4 != size * size:
        raise ValueError(
            f"Expected {size * size // 4} hex digits for a {size}x{size} image. Received: "
            f"len(text)={len(text)}"
        )
    digits = np.array([int(c, 16) for c in text], np.uint8)
    return ((digits[:, None] >> np.array([3, 2, 1, 0], np.uint8)) & 1).reshape(size, size)


def ink_extents(images: np.ndarray) -> np.ndarray:
    """The longer side, in pixels, of each image's ink bounding box (ink: value 0).

    Args:
        images: array `[..., height, width]` (a trailing channel axis of 1 is dropped) of 0/1
            values; every image must hold ink.

    Returns:
        int array of the leading shape.
    """
    images = np.asarray(images)
    if images.shape[-1] == 1:
        images = images[..., 0]
    ink = images == 0
    rows, cols = ink.any(axis=-1), ink.any(axis=-2)
    if not rows.any(axis=-1).all():
        raise ValueError("ink_extents needs ink in every image. Received: an image without ink")

    def span(mask: np.ndarray) -> np.ndarray:
        index = np.arange(mask.shape[-1])
        return np.where(mask, index, -1).max(-1) - np.where(mask, index, mask.shape[-1]).min(-1) + 1

    return np.maximum(span(rows), span(cols))


def make_data(data_dir: str) -> tuple[dict, dict]:
    """The demo's drawings (the JSON object `DATA_FILE` holds) and the training images' ink
    extents (what `STROKE_INK_EXTENT` was set from)."""
    splits = load_omniglot(data_dir, augment=False)
    test, rng = splits.test, np.random.default_rng(SEED)
    chosen = rng.choice(test.num_classes, CHARACTERS, replace=False)
    characters = []
    for c in chosen:
        drawings = np.sort(rng.choice(test.images_per_class, DRAWINGS, replace=False))
        characters.append(
            {
                "name": test.names[c],
                "drawings": [encode_bits(test.images[c, d, ..., 0]) for d in drawings],
                "drawing_numbers": [int(d) + 1 for d in drawings],  # the files' NN in ..._NN.png
            }
        )
    extents = ink_extents(splits.train.images)
    return {
        "description": (
            f"{CHARACTERS} characters of the Reptile paper's Omniglot test split (seed 0), "
            f"{DRAWINGS} drawings each, made by serving/demo/make_data.py"
        ),
        "license": "MIT; Lake, Salakhutdinov & Tenenbaum (2015); see README.md",
        "size": OMNIGLOT_IMAGE_SIZE,
        "encoding": "hex: the 784 bits row-major, 4 per digit, first bit highest; 1 background",
        "characters": characters,
    }, {
        "train_images": int(extents.size),
        "ink_extent_median": float(np.median(extents)),
        "ink_extent_mean": float(extents.mean()),
        "ink_extent_p10_p90": [float(v) for v in np.percentile(extents, [10, 90])],
        "STROKE_INK_EXTENT": STROKE_INK_EXTENT,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.demo.make_data", description=__doc__)
    parser.add_argument("--data_dir", required=True, help="folder of Omniglot's two official zips")
    parser.add_argument("--output", default=str(DATA_FILE), help="JSON file to write")
    args = parser.parse_args(argv)
    data, stats = make_data(args.data_dir)
    pathlib.Path(args.output).write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {args.output}")
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
