"""Mini-ImageNet reader for the Ravi & Larochelle 64/16/20 class split.

Two layouts are accepted in `data_dir`:

- Ravi & Larochelle: `images/*.jpg` plus `train.csv`, `val.csv`, `test.csv` with the header
  `filename,label` (label is a WordNet id such as `n01532829`).
- One folder per class per split: `train/<wnid>/*.jpg`, `val/<wnid>/*.jpg`, `test/<wnid>/*.jpg`.

Images are converted to RGB and, if they are not already `image_size` x `image_size`, resized with
Pillow's BILINEAR filter. Classes are ordered by WordNet id and images by file name.
"""

from __future__ import annotations

import csv
import os
import pathlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_reptile.data.base import ClassImages, EpisodicSplits
from keras_reptile.data.preprocessing import read_rgb

SPLITS = ("train", "val", "test")
EXPECTED_CLASSES = (64, 16, 20)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_miniimagenet(
    data_dir: str,
    *,
    image_size: int = 84,
    expected_classes: tuple[int, int, int] = EXPECTED_CLASSES,
    num_workers: int | None = None,
) -> EpisodicSplits:
    """Loads the meta-training (64 classes) and meta-test (20 classes) splits of Mini-ImageNet.

    Args:
        data_dir: str. Directory in one of the two layouts described in the module docstring.
        image_size: int. Height and width of the stored images.
        expected_classes: tuple of 3 ints. Number of classes required in train, val and test.
        num_workers: int or None. Decoding threads (None: the `ThreadPoolExecutor` default).

    Returns:
        `EpisodicSplits` of uint8 images `[classes, images_per_class, size, size, 3]` with
        `scale=1/255`. Use `load_miniimagenet_split(data_dir, "val")` for the validation classes.

    Example:
    >>> splits = load_miniimagenet("data/miniimagenet")  # doctest: +SKIP
    >>> splits.train.images.shape  # doctest: +SKIP
    (64, 600, 84, 84, 3)
    """
    kwargs = dict(image_size=image_size, expected_classes=expected_classes, num_workers=num_workers)
    return EpisodicSplits(
        train=load_miniimagenet_split(data_dir, "train", **kwargs),
        test=load_miniimagenet_split(data_dir, "test", **kwargs),
    )


def load_miniimagenet_split(
    data_dir: str,
    split: str,
    *,
    image_size: int = 84,
    expected_classes: tuple[int, int, int] = EXPECTED_CLASSES,
    num_workers: int | None = None,
) -> ClassImages:
    """Loads one split ("train", "val" or "test") of Mini-ImageNet.

    Args:
        data_dir: str. Directory in one of the two layouts described in the module docstring.
        split: str. One of "train", "val", "test".
        image_size: int. Height and width of the stored images.
        expected_classes: tuple of 3 ints. Number of classes required in train, val and test.
        num_workers: int or None. Decoding threads (None: the `ThreadPoolExecutor` default).

    Returns:
        `ClassImages` of uint8 images `[classes, images_per_class, size, size, 3]`,
        `scale=1/255`, named by WordNet id.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown Mini-ImageNet split. Valid splits: {SPLITS}. Received: {split=}")
    root = pathlib.Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"The Mini-ImageNet directory does not exist. Received: {data_dir=}")

    files = _list_split(root, split)
    expected = expected_classes[SPLITS.index(split)]
    if len(files) != expected:
        raise ValueError(
            f"Mini-ImageNet split '{split}' has {len(files)} classes, expected {expected}. "
            f"Received: {data_dir=}"
        )
    counts = {wnid: len(paths) for wnid, paths in files.items()}
    fewest, most = min(counts, key=counts.get), max(counts, key=counts.get)
    if counts[fewest] != counts[most]:
        raise ValueError(
            f"Mini-ImageNet split '{split}' needs the same number of images in every class; found "
            f"{counts[fewest]} in {fewest} but {counts[most]} in {most}. Received: {data_dir=}"
        )

    wnids = sorted(files)
    per_class = counts[wnids[0]]
    if per_class == 0:
        raise ValueError(f"Mini-ImageNet split '{split}' has no images. Received: {data_dir=}")
    images = np.empty((len(wnids), per_class, image_size, image_size, 3), np.uint8)

    def decode(flat_index: int) -> None:
        c, i = divmod(flat_index, per_class)
        images[c, i] = read_rgb(files[wnids[c]][i], image_size)

    with ThreadPoolExecutor(num_workers) as pool:
        list(pool.map(decode, range(len(wnids) * per_class)))  # list() re-raises errors.
    return ClassImages(images, scale=1 / 255, names=wnids)


def _list_split(root: pathlib.Path, split: str) -> dict[str, list[pathlib.Path]]:
    """Returns WordNet id -> sorted image paths for one split, in either layout."""
    csv_path, folder = root / f"{split}.csv", root / split
    if csv_path.is_file():
        return _list_csv_split(root, csv_path)
    if folder.is_dir():
        return {
            class_dir.name: sorted(
                p for p in class_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES
            )
            for class_dir in folder.iterdir()
            if class_dir.is_dir()
        }
    found = sorted(os.listdir(root))
    raise ValueError(
        f"Mini-ImageNet split '{split}' not found: looked for {split}.csv with images/ "
        f"(Ravi & Larochelle layout) or the folder {split}/<wnid>/*.jpg. "
        f"Found: {found[:10]}{' ...' if len(found) > 10 else ''}. Received: data_dir={root}"
    )


def _list_csv_split(root: pathlib.Path, csv_path: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"filename", "label"} <= set(reader.fieldnames or ()):
            raise ValueError(
                f"{csv_path.name} must have the header 'filename,label'. "
                f"Received: header={reader.fieldnames}"
            )
        rows = [(row["filename"], row["label"]) for row in reader]
    image_dir = root / "images"
    present = set(os.listdir(image_dir)) if image_dir.is_dir() else set()
    missing = [name for name, _ in rows if name not in present]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(rows)} images listed in {csv_path.name} are missing from "
            f"{image_dir} (first: {missing[:5]}). Received: data_dir={root}"
        )
    files: dict[str, list[pathlib.Path]] = {}
    for name, wnid in rows:
        files.setdefault(wnid, []).append(image_dir / name)
    return {wnid: sorted(paths) for wnid, paths in files.items()}
