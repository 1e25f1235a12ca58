"""In-memory class-indexed image arrays that the task samplers draw from."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ClassImages:
    """Images of one split, grouped by class.

    Args:
        images: uint8 array `[num_classes, images_per_class, height, width, channels]`.
        scale: float. Multiplier that maps the stored uint8 values to model inputs
            (1.0 for Omniglot's 0/1 pixels, 1/255 for Mini-ImageNet).
        names: list of str. One human-readable name per class (for example
            `"Malayalam/character17"` or `"Malayalam/character17/rot90"`).
    """

    images: np.ndarray
    scale: float
    names: list[str]

    def __post_init__(self):
        if self.images.ndim != 5 or self.images.dtype != np.uint8:
            raise ValueError(
                "ClassImages.images must be a uint8 array of shape "
                "[classes, images_per_class, height, width, channels]. "
                f"Received: images.shape={self.images.shape}, images.dtype={self.images.dtype}"
            )
        if len(self.names) != self.images.shape[0]:
            raise ValueError(
                "ClassImages needs one name per class. "
                f"Received: len(names)={len(self.names)}, classes={self.images.shape[0]}"
            )

    @property
    def num_classes(self) -> int:
        return int(self.images.shape[0])

    @property
    def images_per_class(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images.shape[2:])


@dataclasses.dataclass(frozen=True)
class EpisodicSplits:
    """The meta-training and meta-test classes of a dataset."""

    train: ClassImages
    test: ClassImages
