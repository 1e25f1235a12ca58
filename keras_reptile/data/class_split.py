"""The user's own classes as meta-training and meta-test splits.

Shared by the own-data readers (`folder_source`, `array_source`, `tfds_images`): a class split by
seed or by a list of test classes, every class trimmed to one image count (task sampling draws
from a dense `[classes, images, ...]` array), and Omniglot's rotation augmentation of the training
classes on request.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np

from keras_reptile.data.base import ClassImages, EpisodicSplits

ROTATIONS = (0, 90, 180, 270)
_SHOWN = 5  # Classes named in an error message.


def common_image_count(counts: Mapping[str, int], min_images: int, where: str) -> int:
    """The image count every class is trimmed to: the smallest class's.

    Args:
        counts: mapping. Class name -> number of images found.
        min_images: int. Images every class needs (a task's shots plus one query).
        where: str. What the classes were read from, for error messages (`path=...`).

    Returns:
        int. The smallest count, at least `min_images`.
    """
    if not counts:
        raise ValueError(f"No classes found. Received: {where}")
    short = sorted((n, name) for name, n in counts.items() if n < min_images)
    if short:
        named = "; ".join(f"{name!r} has {n}" for n, name in short[:_SHOWN])
        raise ValueError(
            f"{len(short)} of {len(counts)} classes have fewer than {min_images} images "
            f"(every class needs the shots of a task plus one query): {named}"
            f"{' ...' if len(short) > _SHOWN else ''}. Received: {where}, "
            f"min_images={min_images}"
        )
    return min(counts.values())


def split_classes(
    images: np.ndarray,
    names: Sequence[str],
    *,
    scale: float,
    seed: int = 0,
    test_fraction: float = 0.2,
    test_classes: Sequence[str] | None = None,
    rotations: bool = False,
    min_classes: int = 1,
) -> EpisodicSplits:
    """Splits classes into meta-training and meta-test classes.

    Args:
        images: uint8 array `[classes, images_per_class, height, width, channels]`.
        names: sequence of str. One unique name per class.
        scale: float. Multiplier from the stored uint8 values to model inputs.
        seed: int. Seed of the class shuffle when `test_classes` is None.
        test_fraction: float in (0, 1). Share of the classes held out for meta-testing
            (rounded, at least one) when `test_classes` is None.
        test_classes: sequence of str or None. The meta-test classes by name; all others
            meta-train.
        rotations: bool. Add the 90/180/270 degree rotations of each meta-training class as
            separate classes (Omniglot's augmentation; named `<class>/rot<angle>`).
        min_classes: int. Classes each split needs (a task's ways), before rotations.

    Returns:
        `EpisodicSplits`; the classes of each split in the order of `names`.
    """
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise ValueError(f"Class names must be unique. Received: names={names[:20]}")
    if images.shape[0] != len(names):
        raise ValueError(
            f"One name per class is needed. Received: len(names)={len(names)}, "
            f"classes={images.shape[0]}"
        )
    if test_classes is not None:
        test_set = {str(n) for n in test_classes}
        unknown = sorted(test_set - set(names))
        if unknown:
            raise ValueError(
                f"{len(unknown)} listed test classes are not among the {len(names)} classes "
                f"found (first: {names[:_SHOWN]}). Received: test_classes={unknown[:_SHOWN]}"
            )
        test_idx = [i for i, n in enumerate(names) if n in test_set]
        how = f"test_classes={sorted(test_set)[:_SHOWN]}"
    else:
        if not 0 < test_fraction < 1:
            raise ValueError(
                f"test_fraction must be between 0 and 1. Received: test_fraction={test_fraction}"
            )
        order = list(range(len(names)))
        random.Random(seed).shuffle(order)
        num_test = max(1, round(len(names) * test_fraction))
        test_idx = sorted(order[:num_test])
        how = f"test_fraction={test_fraction}, seed={seed}"
    test_set_idx = set(test_idx)
    train_idx = [i for i in range(len(names)) if i not in test_set_idx]
    for split, idx in (("meta-training", train_idx), ("meta-test", test_idx)):
        if len(idx) < max(min_classes, 1):
            raise ValueError(
                f"The {split} split has {len(idx)} of the {len(names)} classes; tasks need at "
                f"least {max(min_classes, 1)} (their ways): add classes, change the split or "
                f"draw fewer ways. Received: {how}, "
                f"min_classes={min_classes}"
            )
    train_images, train_names = images[train_idx], [names[i] for i in train_idx]
    if rotations:
        if images.shape[2] != images.shape[3]:
            raise ValueError(
                "Rotations need square images. "
                f"Received: image_shape={tuple(images.shape[2:])}, rotations=True"
            )
        rotated = [np.rot90(train_images, k=angle // 90, axes=(2, 3)) for angle in ROTATIONS]
        train_images = np.stack(rotated, axis=1).reshape((-1,) + images.shape[1:])
        train_names = [f"{name}/rot{angle}" for name in train_names for angle in ROTATIONS]
    test_images, test_names = images[test_idx], [names[i] for i in test_idx]
    return EpisodicSplits(
        train=ClassImages(np.ascontiguousarray(train_images), scale, train_names),
        test=ClassImages(np.ascontiguousarray(test_images), scale, test_names),
    )
