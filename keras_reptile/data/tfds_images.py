"""A tensorflow-datasets image classification dataset, read from a local `data_dir`, as
meta-training and meta-test classes.

Nothing is downloaded: the dataset must have been prepared in `data_dir` beforehand (for example
with `tfds build NAME --data_dir=DIR` on a machine with internet, then copied). The examples of all
its splits are pooled and grouped by label; the class split is this package's (`class_split`), not
the dataset's train/test split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from keras_reptile.data.array_source import arrays
from keras_reptile.data.base import EpisodicSplits
from keras_reptile.data.preprocessing import pixel_scale, stored_pixels


def tfds_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike,
    image_size: int = 84,
    channels: int = 3,
    image_key: str = "image",
    label_key: str = "label",
    test_fraction: float = 0.2,
    test_classes: Sequence[str] | None = None,
    seed: int = 0,
    rotations: bool = False,
    min_classes: int = 1,
    min_images: int = 2,
) -> EpisodicSplits:
    """Reads the image classification dataset `name` that tensorflow-datasets prepared in
    `data_dir`.

    Args:
        name: str. The dataset's tfds name, optionally with config and version
            (`"mnist"`, `"cifar10:3.0.2"`).
        data_dir: str or path-like. tensorflow-datasets' data directory holding the prepared
            dataset.
        image_size: int. Height and width of the stored images.
        channels: int. 1 (gray) or 3 (RGB).
        image_key, label_key: str. The features holding the image and its class label.
        test_fraction: float in (0, 1). Share of the classes held out for meta-testing, drawn
            with `seed`, when `test_classes` is None.
        test_classes: sequence of str or None. The meta-test classes, by label name (the
            ClassLabel's names, else the label numbers).
        seed: int. Seed of the class split.
        rotations: bool. Add the 90/180/270 degree rotations of each meta-training class as
            separate classes (Omniglot's augmentation).
        min_classes: int. Classes each split needs (a task's ways).
        min_images: int. Images every class needs (a task's shots plus one query).

    Returns:
        `EpisodicSplits` of uint8 images `[classes, K, image_size, image_size, channels]`,
        prepared by `preprocessing.stored_pixels`.

    Example:
    >>> splits = tfds_dataset("mnist", data_dir="~/tensorflow_datasets", image_size=28,
    ...                       channels=1)  # doctest: +SKIP
    """
    shape = (image_size, image_size, channels)
    scale = pixel_scale(shape)  # Also checks image_size and channels.
    if not data_dir:
        raise ValueError(
            "tensorflow-datasets reads from a local data_dir here (nothing is downloaded). "
            f"Received: data_dir={data_dir!r}"
        )
    builder = _prepared_builder(name, os.path.expanduser(os.fspath(data_dir)))
    features = builder.info.features
    for key in (image_key, label_key):
        if key not in features:
            raise ValueError(
                f"The dataset {name} has no feature {key!r}; its features are "
                f"{sorted(features)}. Received: image_key={image_key!r}, label_key={label_key!r}"
            )
    label_names = getattr(features[label_key], "names", None)
    images, labels = [], []
    for split in sorted(builder.info.splits):
        for example in builder.as_dataset(split=split).as_numpy_iterator():
            pixels = np.asarray(example[image_key])
            if pixels.ndim == 3 and pixels.shape[2] == 1:
                pixels = pixels[..., 0]
            images.append(stored_pixels(Image.fromarray(pixels), shape))
            labels.append(int(example[label_key]))
    if not images:
        raise ValueError(f"The dataset has no examples. Received: name={name!r}, {data_dir=}")
    return arrays(
        np.stack(images),
        labels,
        scale=scale,
        class_names=label_names,
        test_fraction=test_fraction,
        test_classes=test_classes,
        seed=seed,
        rotations=rotations,
        min_classes=min_classes,
        min_images=min_images,
    )


def _prepared_builder(name: str, data_dir: str):
    """The tfds builder of `name` in `data_dir`, refusing a dataset that is not prepared there."""
    try:
        import tensorflow_datasets as tfds  # Imported here: heavy, and only this source needs it.
    except ImportError as e:
        raise ValueError(
            "Reading a tensorflow-datasets dataset needs the tensorflow-datasets package "
            f"(pip install tensorflow-datasets). Received: name={name!r}"
        ) from e
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises its own DatasetNotFoundError, among others.
        raise ValueError(
            f"tensorflow-datasets has no dataset {name!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}) and none is prepared in data_dir. "
            f"Received: name={name!r}, data_dir={data_dir!r}"
        ) from None
    if not builder.is_prepared():
        raise ValueError(
            f"The dataset {name!r} is not prepared in data_dir, and nothing is downloaded at run "
            f"time: prepare it where the internet is reachable (`tfds build {name} "
            f"--data_dir=DIR`, or `tfds.builder({name!r}, data_dir=DIR).download_and_prepare()`) "
            f"and pass that DIR. Received: data_dir={data_dir!r}"
        )
    return builder
