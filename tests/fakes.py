"""Small fake datasets for tests."""

import numpy as np


def fake_class_images(num_classes=12, per_class=6, shape=(8, 8, 1), seed=0):
    """Random 0/1 class images: each class has its own pixel pattern plus noise."""
    from keras_reptile.data.base import ClassImages

    rng = np.random.default_rng(seed)
    prototypes = rng.random((num_classes, 1, *shape)) < 0.5
    noise = rng.random((num_classes, per_class, *shape)) < 0.1
    images = (prototypes ^ noise).astype(np.uint8)
    return ClassImages(images, 1.0, [f"class{i}" for i in range(num_classes)])
