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


def miniimagenet_color(wnid, index, shift=0):
    """A distinct solid colour per fake Mini-ImageNet image, so tests can check where it landed."""
    seed = int(wnid[1:]) + index + shift
    return (seed % 251, (seed * 7) % 251, (seed * 13) % 251)


def save_solid_png(path, color):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), color).save(path, "PNG")  # PNG: lossless colours.


def miniimagenet_file_name(wnid, index):
    return f"{wnid}{index:08d}.png"  # Ravi & Larochelle's names: sorting keeps the index order.


def write_fake_miniimagenet(root, per_class=3, folder=lambda split, wnid, index: f"{split}/{wnid}"):
    """The 100 real Mini-ImageNet classes with `per_class` solid-colour PNGs each; image `index` of
    class `wnid` of `split` goes into `root / folder(split, wnid, index)`."""
    from keras_reptile.data.miniimagenet_classes import SPLIT_CLASSES

    for split, wnids in SPLIT_CLASSES.items():
        for wnid in wnids:
            for i in range(per_class):
                path = root / folder(split, wnid, i) / miniimagenet_file_name(wnid, i)
                save_solid_png(path, miniimagenet_color(wnid, i))
