"""In-memory images and labels as meta-training and meta-test classes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keras_reptile.data.base import EpisodicSplits
from keras_reptile.data.class_split import common_image_count, split_classes


def arrays(
    images: np.ndarray,
    labels: Sequence,
    *,
    scale: float = 1 / 255,
    class_names: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    test_classes: Sequence | None = None,
    seed: int = 0,
    rotations: bool = False,
    min_classes: int = 1,
    min_images: int = 2,
) -> EpisodicSplits:
    """Groups images by label into meta-training and meta-test classes.

    Every class keeps its first K images in array order, K the smallest class's count.

    Args:
        images: uint8 array `[examples, height, width]` or `[examples, height, width,
            channels]`.
        labels: sequence of ints or strs, one per image.
        scale: float. Multiplier from the uint8 values to model inputs.
        class_names: sequence of str or None. Names of the integer labels 0, 1, ... (default:
            the labels as strings).
        test_fraction: float in (0, 1). Share of the classes held out for meta-testing, drawn
            with `seed`, when `test_classes` is None.
        test_classes: sequence or None. The meta-test classes, by label or class name.
        seed: int. Seed of the class split.
        rotations: bool. Add the 90/180/270 degree rotations of each meta-training class as
            separate classes (Omniglot's augmentation).
        min_classes: int. Classes each split needs (a task's ways).
        min_images: int. Images every class needs (a task's shots plus one query).

    Returns:
        `EpisodicSplits` of uint8 images `[classes, K, height, width, channels]`, classes ordered
        by label.

    Example:
    >>> x = np.zeros([60, 8, 8], np.uint8)
    >>> splits = arrays(x, np.arange(60) % 10, test_fraction=0.3)
    >>> splits.train.images.shape, splits.test.names
    ((7, 6, 8, 8, 1), ['1', '7', '8'])
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(
            "images must be a uint8 array [examples, height, width] or [examples, height, "
            "width, channels] (for floats in [0, 1]: (x * 255).round().astype(np.uint8)). "
            f"Received: images.shape={images.shape}, images.dtype={images.dtype}"
        )
    if images.ndim == 3:
        images = images[..., None]
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            "labels must hold one label per image. "
            f"Received: labels.shape={labels.shape}, images.shape={images.shape}"
        )
    keys = sorted(set(labels.tolist()))
    if class_names is not None:
        names = [str(class_names[k]) for k in keys]
    else:
        names = [str(k) for k in keys]
    members = [np.flatnonzero(labels == k) for k in keys]
    count = common_image_count(
        {n: len(m) for n, m in zip(names, members)}, min_images, f"labels of {len(images)} images"
    )
    grouped = np.stack([images[m[:count]] for m in members])
    if test_classes is not None:
        by_label = dict(zip((str(k) for k in keys), names))
        test_classes = [by_label.get(str(c), str(c)) for c in test_classes]
    return split_classes(
        grouped,
        names,
        scale=scale,
        seed=seed,
        test_fraction=test_fraction,
        test_classes=test_classes,
        rotations=rotations,
        min_classes=min_classes,
    )
