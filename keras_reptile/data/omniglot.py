"""Omniglot reader that reproduces the split of openai/supervised-reptile.

The official code merges the 1623 characters of `images_background` and `images_evaluation`,
lists them as sorted alphabet names then sorted character names, calls `random.seed(seed)` and
`random.shuffle` on that list, and keeps the first 1200 characters for meta-training. Images are
`Image.open(png).resize((28, 28))` (Pillow uses NEAREST for 1-bit images), so pixels are 0/1 with
1 for the background. Training characters are augmented with rotations by 0/90/180/270 degrees.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import pathlib
import random
import zipfile
from collections.abc import Callable

import numpy as np
from PIL import Image

from keras_reptile.data.base import ClassImages, EpisodicSplits
from keras_reptile.data.preprocessing import OMNIGLOT_IMAGE_SIZE, omniglot_bits

SOURCES = ("local", "tfds")
IMAGES_PER_CHARACTER = 20
IMAGE_SIZE = OMNIGLOT_IMAGE_SIZE
ROTATIONS = (0, 90, 180, 270)
_SETS = ("images_background", "images_evaluation")
# The files tensorflow-datasets' Omniglot builder prepares from (it checks their checksums).
TFDS_ZIPS = tuple(f"{name}.zip" for name in (*_SETS, "images_background_small1",
                                             "images_background_small2"))  # fmt: skip

# (alphabet, "characterNN") -> list of (file name, function returning the PNG bytes).
_FileIndex = dict[tuple[str, str], list[tuple[str, Callable[[], bytes]]]]


def load_omniglot(
    data_dir: str,
    *,
    seed: int = 0,
    num_train: int = 1200,
    augment: bool = True,
    source: str = "local",
    tfds_manual_dir: str | None = None,
) -> EpisodicSplits:
    """Loads Omniglot with the Reptile paper's train/test split of characters.

    Args:
        data_dir: str. For `source="local"`, a directory holding `images_background.zip` and
            `images_evaluation.zip`, or the extracted folders `images_background/` and
            `images_evaluation/`, or the alphabet folders of both sets merged
            (`<Alphabet>/characterNN/*.png`). For `source="tfds"`, the tensorflow-datasets
            `data_dir` (an empty string means the tfds default).
        seed: int. Seed of the character shuffle (the official code's `--seed`).
        num_train: int. Number of characters for meta-training; the rest are meta-test.
        augment: bool. Whether to add the 90/180/270 degree rotations of each training character
            as separate classes (class index `4 * character + rotation`).
        source: str. `"local"` (read the files above) or `"tfds"` (`tfds.load("omniglot")`).
        tfds_manual_dir: str or None. For `source="tfds"`: a directory holding the four official
            zips (`images_background.zip`, `images_evaluation.zip`,
            `images_background_small1.zip`, `images_background_small2.zip`) with their
            published checksums, used instead of downloading.

    Returns:
        `EpisodicSplits` of uint8 images `[classes, 20, 28, 28, 1]` with values 0/1 and
        `scale=1.0`: 4800 train classes (1200 without `augment`) and 423 test classes.

    Example:
    >>> splits = load_omniglot("data/omniglot")  # doctest: +SKIP
    >>> splits.train.names[1], splits.test.names[0]  # doctest: +SKIP
    ('Japanese_(hiragana)/character47/rot90', 'Malayalam/character17')
    """
    if source == "local":
        names, images = _read_local(data_dir)
    elif source == "tfds":
        names, images = _read_tfds(data_dir, tfds_manual_dir)
    else:
        raise ValueError(f"Unknown Omniglot source. Valid sources: {SOURCES}. Received: {source=}")
    return split_characters(names, images, seed=seed, num_train=num_train, augment=augment)


def split_characters(
    names: list[str], images: np.ndarray, *, seed: int, num_train: int, augment: bool
) -> EpisodicSplits:
    """Shuffles characters as the official code does and builds the train and test classes.

    Args:
        names: list of str. Character names ("Alphabet/characterNN") in sorted order.
        images: uint8 array `[characters, 20, 28, 28]` matching `names`.
        seed: int. Seed of `random.Random(seed).shuffle`, equal to `random.seed(seed)` followed by
            `random.shuffle`. Shuffling indices gives the same permutation as shuffling the list.
        num_train: int. Number of training characters.
        augment: bool. Whether to add rotated copies of the training characters.

    Returns:
        `EpisodicSplits` with images of shape `[classes, 20, 28, 28, 1]`.
    """
    if not 0 < num_train < len(names):
        raise ValueError(
            "num_train must be positive and smaller than the number of characters "
            f"({len(names)}). Received: {num_train=}"
        )
    order = list(range(len(names)))
    random.Random(seed).shuffle(order)
    train_idx, test_idx = order[:num_train], order[num_train:]

    train_images = images[train_idx]
    train_names = [names[i] for i in train_idx]
    if augment:
        rotated = [np.rot90(train_images, k=angle // 90, axes=(2, 3)) for angle in ROTATIONS]
        train_images = np.stack(rotated, axis=1).reshape((-1,) + images.shape[1:])
        train_names = [f"{name}/rot{angle}" for name in train_names for angle in ROTATIONS]
    train = ClassImages(train_images[..., None], scale=1.0, names=train_names)
    test = ClassImages(images[test_idx][..., None], scale=1.0, names=[names[i] for i in test_idx])
    return EpisodicSplits(train=train, test=test)


def _read_local(data_dir: str) -> tuple[list[str], np.ndarray]:
    """Reads all characters from zips or folders, sorted by alphabet then character name."""
    root = pathlib.Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"The Omniglot directory does not exist. Received: data_dir={data_dir}")
    with contextlib.ExitStack() as stack:
        index = _index_local_files(root, stack)
        keys = sorted(index)
        images = np.empty((len(keys), IMAGES_PER_CHARACTER, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        for i, key in enumerate(keys):
            files = sorted(index[key], key=lambda item: item[0])
            _check_image_count("/".join(key), len(files), data_dir)
            for j, (_, read) in enumerate(files):
                with Image.open(io.BytesIO(read())) as image:
                    images[i, j] = omniglot_bits(image)
    return [f"{alphabet}/{char}" for alphabet, char in keys], images


def _index_local_files(root: pathlib.Path, stack: contextlib.ExitStack) -> _FileIndex:
    """Finds the PNG files of every character under `root` (zips stay open in `stack`)."""
    index: _FileIndex = {}
    found_sets = []
    for set_name in _SETS:
        zip_path, folder = root / f"{set_name}.zip", root / set_name
        if zip_path.is_file():
            _index_zip(stack.enter_context(zipfile.ZipFile(zip_path)), index)
            found_sets.append(set_name)
        elif folder.is_dir():
            _index_alphabet_folders(folder, index)
            found_sets.append(set_name)
    if len(found_sets) == 1:
        missing = [s for s in _SETS if s not in found_sets][0]
        raise ValueError(
            f"Found Omniglot's {found_sets[0]} but not {missing}.zip or {missing}/. "
            f"Both sets are needed. Received: data_dir={root}"
        )
    if not found_sets:
        # Layout of the official fetch script: alphabets of both sets merged in one folder.
        _index_alphabet_folders(root, index)
    if not index:
        found = sorted(os.listdir(root))
        raise ValueError(
            "No Omniglot images found. Looked for images_background.zip and "
            "images_evaluation.zip, the extracted folders images_background/ and "
            "images_evaluation/, or alphabet folders <Alphabet>/characterNN/*.png. "
            f"Found: {found[:10]}{' ...' if len(found) > 10 else ''}. A folder of your own "
            f"class folders is read with --dataset=folder. Received: data_dir={root}"
        )
    return index


def _index_zip(archive: zipfile.ZipFile, index: _FileIndex) -> None:
    for member in archive.namelist():
        parts = member.split("/")
        if len(parts) < 3 or "__MACOSX" in parts or not parts[-1].endswith(".png"):
            continue
        alphabet, char, file_name = parts[-3:]
        if char.startswith("character"):
            read = functools.partial(archive.read, member)
            index.setdefault((alphabet, char), []).append((file_name, read))


def _index_alphabet_folders(folder: pathlib.Path, index: _FileIndex) -> None:
    for alphabet_dir in folder.iterdir():
        if not alphabet_dir.is_dir():
            continue
        for char_dir in alphabet_dir.iterdir():
            if not (char_dir.name.startswith("character") and char_dir.is_dir()):
                continue
            files = index.setdefault((alphabet_dir.name, char_dir.name), [])
            for path in char_dir.iterdir():
                if path.name.endswith(".png"):
                    files.append((path.name, path.read_bytes))


def _check_image_count(name: str, count: int, data_dir: str | None) -> None:
    if count != IMAGES_PER_CHARACTER:
        raise ValueError(
            f"Omniglot character {name} has {count} images; every character needs "
            f"{IMAGES_PER_CHARACTER}. Received: data_dir={data_dir}"
        )


def _read_tfds(data_dir: str, manual_dir: str | None) -> tuple[list[str], np.ndarray]:
    """Reads all characters through `tfds.load("omniglot")` in the same order as `_read_local`.

    The tfds builder stores `alphabet` as a ClassLabel whose names are the sorted alphabet folder
    names, and `alphabet_char_id = int(NN) - 1` for folder `characterNN`. Sorting by
    (alphabet index, character id) is therefore the sorted folder listing of the official code
    (character numbers have two digits). Images are the original PNG bytes decoded to 3 channels
    of 0/255, so channel 0 > 127 is the 1-bit pixel Pillow sees in the PNG. The order of the 20
    images within a character follows the tfds records, not the file names.
    """
    import tensorflow_datasets as tfds  # Imported here: heavy, and only this source needs it.

    where = f"data_dir={data_dir!r}, tfds_manual_dir={manual_dir!r}"
    builder = tfds.builder("omniglot", data_dir=data_dir or None)
    if not builder.is_prepared():
        if manual_dir is None:
            raise ValueError(
                "tensorflow-datasets' Omniglot is not prepared in data_dir, and nothing is "
                "downloaded at run time: pass --tfds_manual_dir with the four official zips "
                f"({', '.join(TFDS_ZIPS)}), a data_dir where it is prepared, or read the two "
                f"zips with the default reader (--data_source=local). Received: {where}"
            )
        missing = [z for z in TFDS_ZIPS if not (pathlib.Path(manual_dir) / z).is_file()]
        if missing:
            raise ValueError(
                f"tensorflow-datasets prepares Omniglot from the four official zips "
                f"({', '.join(TFDS_ZIPS)}) and would download the missing {missing}; nothing "
                "is downloaded at run time (and tfds checks the zips' checksums: re-packed copies "
                "such as the two this project reads do not match). For the two zips "
                "images_background.zip and images_evaluation.zip use the default reader "
                f"(--data_source=local --data_dir=DIR). Received: {where}"
            )
        config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as e:
            # tfds's NonMatchingChecksumError is not in its public API: matched by name.
            if type(e).__name__ != "NonMatchingChecksumError":
                raise
            raise ValueError(
                "The Omniglot zips in tfds_manual_dir are not byte-identical to the ones "
                "tensorflow-datasets registered (re-packed copies, such as the ones this project "
                "reads, have other checksums even with the same PNGs). Read them with the "
                "default reader instead (--data_source=local --data_dir=DIR: the same "
                "characters and split), or give --tfds_manual_dir the unmodified official zips. "
                f"tfds said: {str(e).splitlines()[0]} Received: {where}"
            ) from None
    dataset, info = builder.as_dataset(split="train+test"), builder.info
    alphabet_names = info.features["alphabet"].names
    by_character: dict[tuple[int, int], list[np.ndarray]] = {}
    for example in tfds.as_numpy(dataset):
        key = (int(example["alphabet"]), int(example["alphabet_char_id"]))
        bits = Image.fromarray(example["image"][..., 0] > 127)
        by_character.setdefault(key, []).append(omniglot_bits(bits))

    if not by_character:
        raise ValueError(f"tfds returned no Omniglot examples. Received: data_dir={data_dir}")
    keys = sorted(by_character)
    names = [f"{alphabet_names[a]}/character{c + 1:02d}" for a, c in keys]
    for name, key in zip(names, keys, strict=True):
        _check_image_count(name, len(by_character[key]), data_dir)
    return names, np.stack([np.stack(by_character[key]) for key in keys])
