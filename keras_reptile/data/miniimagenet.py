"""Mini-ImageNet reader for the Ravi & Larochelle 64/16/20 class split.

`data_dir` may hold the 100 classes in any arrangement of these, found anywhere below it:

- class folders named by WordNet id (`n01532829/*.jpg`, also `.jpeg`, `.png`), such as
  `train/<wnid>/` + `val/<wnid>/` (a per-class re-split of every class), or the few-shot
  `train/` `val/` `test/` folders, or all 100 side by side; folders of the same WordNet id merge;
- Ravi & Larochelle's layout: `images/*.jpg` beside `train.csv`, `val.csv`, `test.csv` with the
  header `filename,label` (label is a WordNet id).

Each class goes to the split that `miniimagenet_classes.SPLIT_CLASSES` names, whatever folder it was
found in. Every one of the 100 classes must be present with exactly `images_per_class` (600)
distinct images (distinct file names: a name found in two folders of a class counts once), and no
other WordNet id may appear. Hidden files and folders (names starting with ".") are skipped.

Images are converted to RGB and, if they are not already `image_size` x `image_size`, resized with
Pillow's BILINEAR filter. Classes are ordered by WordNet id and images by file name. Decoded splits
are cached as `.npy` files (see `array_cache`) and memory-mapped on later loads.
"""

from __future__ import annotations

import csv
import hashlib
import os
import pathlib
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_reptile.data.array_cache import cached_array, default_cache_dir, file_stamp
from keras_reptile.data.base import ClassImages, EpisodicSplits
from keras_reptile.data.miniimagenet_classes import SPLIT_CLASSES
from keras_reptile.data.preprocessing import read_rgb

SPLITS = tuple(SPLIT_CLASSES)
IMAGES_PER_CLASS = 600
_WNID = re.compile(r"n\d{8}")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_SHOWN = 5  # Classes named in an error message, per kind of problem.


def load_miniimagenet(
    data_dir: str | os.PathLike,
    *,
    image_size: int = 84,
    images_per_class: int = IMAGES_PER_CLASS,
    num_workers: int | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> EpisodicSplits:
    """Loads the meta-training (64 classes) and meta-test (20 classes) splits of Mini-ImageNet.

    Args:
        data_dir: str or path-like. Folder holding the 100 classes (see the module docstring).
        image_size: int. Height and width of the stored images.
        images_per_class: int. Images every class must have.
        num_workers: int or None. Decoding threads (None: the `ThreadPoolExecutor` default).
        cache: bool. Whether to keep the decoded splits in `cache_dir` for the next load.
        cache_dir: str, path-like or None. The cache folder (None: `default_cache_dir()`).

    Returns:
        `EpisodicSplits` of uint8 images `[classes, images_per_class, size, size, 3]` with
        `scale=1/255`. Use `load_miniimagenet_split(data_dir, "val")` for the validation classes.

    Example:
    >>> splits = load_miniimagenet("data/miniimagenet")  # doctest: +SKIP
    >>> splits.train.images.shape  # doctest: +SKIP
    (64, 600, 84, 84, 3)
    """
    root, files = _checked_files(data_dir, images_per_class)
    options = dict(image_size=image_size, num_workers=num_workers, cache=cache, cache_dir=cache_dir)
    return EpisodicSplits(
        train=_load_split(root, files, "train", **options),
        test=_load_split(root, files, "test", **options),
    )


def load_miniimagenet_split(
    data_dir: str | os.PathLike,
    split: str,
    *,
    image_size: int = 84,
    images_per_class: int = IMAGES_PER_CLASS,
    num_workers: int | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> ClassImages:
    """Loads one split ("train", "val" or "test") of Mini-ImageNet.

    Args:
        data_dir: str or path-like. Folder holding the 100 classes (see the module docstring).
        split: str. One of "train", "val", "test".
        image_size: int. Height and width of the stored images.
        images_per_class: int. Images every class must have.
        num_workers: int or None. Decoding threads (None: the `ThreadPoolExecutor` default).
        cache: bool. Whether to keep the decoded split in `cache_dir` for the next load.
        cache_dir: str, path-like or None. The cache folder (None: `default_cache_dir()`).

    Returns:
        `ClassImages` of uint8 images `[classes, images_per_class, size, size, 3]`,
        `scale=1/255`, named by WordNet id.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown Mini-ImageNet split. Valid splits: {SPLITS}. Received: {split=}")
    root, files = _checked_files(data_dir, images_per_class)
    return _load_split(
        root,
        files,
        split,
        image_size=image_size,
        num_workers=num_workers,
        cache=cache,
        cache_dir=cache_dir,
    )


def find_miniimagenet(
    data_dir: str | os.PathLike, *, images_per_class: int = IMAGES_PER_CLASS
) -> dict[str, list[pathlib.Path]]:
    """WordNet id -> its image files sorted by name, for all 100 classes, checked as described in
    the module docstring (a `ValueError` names what is missing, short or unknown)."""
    return _checked_files(data_dir, images_per_class)[1]


def _load_split(
    root: pathlib.Path,
    files: dict[str, list[pathlib.Path]],
    split: str,
    *,
    image_size: int,
    num_workers: int | None,
    cache: bool,
    cache_dir: str | os.PathLike | None,
) -> ClassImages:
    wnids = sorted(SPLIT_CLASSES[split])
    paths = [files[wnid] for wnid in wnids]
    shape = (len(wnids), len(paths[0]), image_size, image_size, 3)

    def decode(out: np.ndarray) -> None:
        def decode_class(c: int) -> None:
            for i, path in enumerate(paths[c]):
                out[c, i] = read_rgb(path, image_size)

        with ThreadPoolExecutor(num_workers) as pool:
            list(pool.map(decode_class, range(len(paths))))  # list() re-raises errors.

    if cache:
        slot = hashlib.sha256(str(root).encode()).hexdigest()[:12]
        images = cached_array(
            cache_dir if cache_dir is not None else default_cache_dir(),
            prefix=f"miniimagenet-{split}-{image_size}px-{slot}",
            key=file_stamp((p for class_paths in paths for p in class_paths), shape),
            shape=shape,
            fill=decode,
        )
    else:
        images = np.empty(shape, np.uint8)
        decode(images)
    return ClassImages(images, scale=1 / 255, names=wnids)


def _checked_files(
    data_dir: str | os.PathLike, images_per_class: int
) -> tuple[pathlib.Path, dict[str, list[pathlib.Path]]]:
    """The resolved `data_dir` and WordNet id -> sorted image paths, checked."""
    if isinstance(images_per_class, bool) or not isinstance(images_per_class, int):
        raise ValueError(f"images_per_class must be an int. Received: {images_per_class=}")
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be positive. Received: {images_per_class=}")
    root = pathlib.Path(data_dir).resolve()
    if not root.is_dir():
        raise ValueError(f"The Mini-ImageNet directory does not exist. Received: {data_dir=}")
    by_name, sources = _scan(root)
    if not by_name:
        found = sorted(os.listdir(root))
        raise ValueError(
            "No Mini-ImageNet classes found: looked for folders named by WordNet id "
            "(n01532829/*.jpg) anywhere below data_dir and for Ravi & Larochelle's images/ with "
            f"train.csv, val.csv, test.csv. Found: {_first(found, 10)}. A folder of your own "
            f"class folders is read with --dataset=folder. Received: data_dir={root}"
        )
    known = [wnid for split in SPLITS for wnid in SPLIT_CLASSES[split]]
    problems = []
    missing = [wnid for wnid in known if wnid not in by_name]
    if missing:
        per_split = ", ".join(
            f"{split} {n}"
            for split in SPLITS
            if (n := sum(w in missing for w in SPLIT_CLASSES[split]))
        )
        problems.append(
            f"{len(missing)} of its {len(known)} classes are missing ({per_split}): "
            f"{_first(missing)}"
        )
    short = [wnid for wnid in known if len(by_name.get(wnid, ())) not in (0, images_per_class)]
    if short:
        counts = [f"{w} has {len(by_name[w])} (in {', '.join(sources[w])})" for w in short]
        problems.append(
            f"{len(short)} classes do not have exactly {images_per_class} distinct images: "
            f"{'; '.join(counts[:_SHOWN])}{' ...' if len(short) > _SHOWN else ''}"
        )
    unknown = sorted(set(by_name) - set(known))
    if unknown:
        places = [f"{w} (in {', '.join(sources[w])})" for w in unknown]
        problems.append(
            f"{len(unknown)} WordNet ids are not Mini-ImageNet classes: "
            f"{'; '.join(places[:_SHOWN])}{' ...' if len(unknown) > _SHOWN else ''}"
        )
    if problems:
        raise ValueError(
            "Mini-ImageNet under data_dir is not complete (other classes are read with "
            f"--dataset=folder): {'. '.join(problems)}. "
            f"Received: data_dir={root}, {images_per_class=}"
        )
    return root, {wnid: [by_name[wnid][name] for name in sorted(by_name[wnid])] for wnid in known}


def _scan(
    root: pathlib.Path,
) -> tuple[dict[str, dict[str, pathlib.Path]], dict[str, list[str]]]:
    """WordNet id -> {file name: first path found}, and WordNet id -> where it was found."""
    by_name: dict[str, dict[str, pathlib.Path]] = {}
    sources: dict[str, list[str]] = {}

    def add(wnid: str, paths: list[pathlib.Path], source: pathlib.Path) -> None:
        names = by_name.setdefault(wnid, {})
        for path in paths:
            names.setdefault(path.name, path)
        sources.setdefault(wnid, []).append(str(source.relative_to(root)))

    visited = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # A symbolic link back to a folder already read.
            dirnames.clear()
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = pathlib.Path(dirpath)
        if _WNID.fullmatch(here.name):
            images = sorted(
                here / f
                for f in filenames
                if not f.startswith(".") and f.lower().endswith(_IMAGE_SUFFIXES)
            )
            if images:
                add(here.name, images, here)
        csv_names = [f"{split}.csv" for split in SPLITS if f"{split}.csv" in filenames]
        if csv_names and "images" in dirnames:
            for csv_name in csv_names:
                for wnid, paths in _read_csv(here, csv_name).items():
                    add(wnid, paths, here / csv_name)
    return by_name, sources


def _read_csv(folder: pathlib.Path, csv_name: str) -> dict[str, list[pathlib.Path]]:
    """WordNet id -> image paths listed in Ravi & Larochelle's `csv_name` (beside `images/`)."""
    with open(folder / csv_name, newline="") as f:
        reader = csv.DictReader(f)
        if not {"filename", "label"} <= set(reader.fieldnames or ()):
            raise ValueError(
                f"{csv_name} must have the header 'filename,label'. "
                f"Received: header={reader.fieldnames}, folder={folder}"
            )
        rows = [(row["filename"], row["label"]) for row in reader]
    image_dir = folder / "images"
    present = set(os.listdir(image_dir))
    missing = [name for name, _ in rows if name not in present]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(rows)} images listed in {csv_name} are missing from "
            f"{image_dir} (first: {missing[:_SHOWN]}). Received: folder={folder}"
        )
    files: dict[str, list[pathlib.Path]] = {}
    for name, wnid in rows:
        files.setdefault(wnid, []).append(image_dir / name)
    return files


def _first(names: list[str], n: int = _SHOWN) -> str:
    return f"{names[:n]}{' ...' if len(names) > n else ''}"
