"""A folder of class sub-folders of images as meta-training and meta-test classes.

Two layouts:

- `<path>/<class>/<image files>`: the classes are split by seed (`test_fraction`) or by a list of
  test classes (`test_classes`);
- `<path>/train/<class>/...` and `<path>/test/<class>/...`: the folders are the split.

Image files are those Pillow reads with the suffixes `IMAGE_SUFFIXES` (any case), of any size and
mode; hidden files and folders (names starting with ".") are skipped. Every image is prepared by
`preprocessing.stored_pixels` (gray or RGB, BILINEAR-resized to `image_size`; Omniglot's 0/1 bits
for 28x28 gray), as the serving client prepares a file for a model of that input shape. Classes are
ordered by name and images by file name; every class keeps its first K images, K the smallest
class's count. Decoded images are cached as `.npy` files (see `array_cache`).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_reptile.data.array_cache import cached_array, default_cache_dir, file_stamp
from keras_reptile.data.base import EpisodicSplits
from keras_reptile.data.class_split import common_image_count, split_classes
from keras_reptile.data.preprocessing import open_image, pixel_scale, stored_pixels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLIT_FOLDERS = ("train", "test")


def image_folder(
    path: str | os.PathLike,
    *,
    image_size: int = 84,
    channels: int = 3,
    test_fraction: float = 0.2,
    test_classes: Sequence[str] | None = None,
    seed: int = 0,
    rotations: bool = False,
    min_classes: int = 1,
    min_images: int = 2,
    num_workers: int | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> EpisodicSplits:
    """Reads a folder of class sub-folders of images (see the module docstring).

    Args:
        path: str or path-like. The folder.
        image_size: int. Height and width of the stored images.
        channels: int. 1 (gray) or 3 (RGB).
        test_fraction: float in (0, 1). Share of the classes held out for meta-testing, drawn
            with `seed` (the flat layout without `test_classes`).
        test_classes: sequence of str or None. Names of the meta-test class folders (the flat
            layout only).
        seed: int. Seed of the class split.
        rotations: bool. Add the 90/180/270 degree rotations of each meta-training class as
            separate classes (Omniglot's augmentation).
        min_classes: int. Classes each split needs (a task's ways).
        min_images: int. Images every class needs (a task's shots plus one query).
        num_workers: int or None. Decoding threads (None: the `ThreadPoolExecutor` default).
        cache: bool. Whether to keep the decoded images in `cache_dir` for the next load.
        cache_dir: str, path-like or None. The cache folder (None: `default_cache_dir()`).

    Returns:
        `EpisodicSplits` of uint8 images `[classes, K, image_size, image_size, channels]`;
        `scale` is 1/255 (1.0 for 28x28 gray, Omniglot's bits).

    Example:
    >>> splits = image_folder("photos", image_size=32, channels=3)  # doctest: +SKIP
    >>> splits.train.images.shape  # doctest: +SKIP
    (40, 12, 32, 32, 3)
    """
    root = pathlib.Path(path).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"The image folder does not exist. Received: path={path}")
    shape = (image_size, image_size, channels)
    scale = pixel_scale(shape)  # Also checks image_size and channels.
    files, listed_test = _find_classes(root)
    if listed_test is not None:
        if test_classes is not None:
            raise ValueError(
                "The folder is split into train/ and test/ already; test_classes applies to a "
                f"folder of class folders. Received: path={root}, test_classes={test_classes}"
            )
        test_classes = listed_test
    names = sorted(files)
    count = common_image_count({n: len(files[n]) for n in names}, min_images, f"path={root}")
    paths = [files[n][:count] for n in names]

    def decode(out: np.ndarray) -> None:
        def decode_class(c: int) -> None:
            for i, file in enumerate(paths[c]):
                with open_image(file) as image:
                    out[c, i] = stored_pixels(image, shape)

        with ThreadPoolExecutor(num_workers) as pool:
            list(pool.map(decode_class, range(len(paths))))  # list() re-raises errors.

    full_shape = (len(names), count, *shape)
    if cache:
        slot = hashlib.sha256(str(root).encode()).hexdigest()[:12]
        images = cached_array(
            cache_dir if cache_dir is not None else default_cache_dir(),
            prefix=f"folder-{image_size}px-{channels}c-{slot}",
            key=file_stamp((p for class_paths in paths for p in class_paths), full_shape),
            shape=full_shape,
            fill=decode,
        )
    else:
        images = np.empty(full_shape, np.uint8)
        decode(images)
    return split_classes(
        images,
        names,
        scale=scale,
        seed=seed,
        test_fraction=test_fraction,
        test_classes=test_classes,
        rotations=rotations,
        min_classes=min_classes,
    )


def _find_classes(root: pathlib.Path) -> tuple[dict[str, list[pathlib.Path]], list[str] | None]:
    """Class name -> its image files sorted by name, and the test classes of the train/ test/
    layout (None for the flat layout)."""
    folders = _visible_folders(root)
    split_dirs = [root / s for s in SPLIT_FOLDERS]
    if all(d in folders for d in split_dirs) and all(_visible_folders(d) for d in split_dirs):
        train, test = (_class_files(d) for d in split_dirs)
        both = sorted(set(train) & set(test))
        if both:
            raise ValueError(
                f"Classes {both[:5]} are in both train/ and test/; a class belongs to one split. "
                f"Received: path={root}"
            )
        return {**train, **test}, sorted(test)
    files = _class_files(root)
    if not files:
        found = sorted(os.listdir(root))
        raise ValueError(
            "No class folders found: expected <class>/<image files> or train/<class>/ and "
            f"test/<class>/ below the folder. Found: {found[:10]}"
            f"{' ...' if len(found) > 10 else ''}. Received: path={root}"
        )
    return files, None


def _class_files(folder: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    return {
        d.name: sorted(
            p
            for p in d.iterdir()
            if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        for d in _visible_folders(folder)
    }


def _visible_folders(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
