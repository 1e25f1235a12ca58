import os

import numpy as np
import pytest
from PIL import Image

from keras_reptile.data.miniimagenet import (
    find_miniimagenet,
    load_miniimagenet,
    load_miniimagenet_split,
)
from keras_reptile.data.miniimagenet_classes import SPLIT_CLASSES
from keras_reptile.data.streams import task_seeds
from keras_reptile.data.tasks import ClassificationTasks
from tests.fakes import miniimagenet_color as _color
from tests.fakes import miniimagenet_file_name as _name
from tests.fakes import save_solid_png as _save
from tests.fakes import write_fake_miniimagenet

# The real 100 classes with 3 fake images each (instead of 600).
PER_CLASS = 3
SIZE = 8


# Where image i of a class goes, for each folder layout.
FOLDER_LAYOUTS = {
    "few_shot_folders": lambda split, wnid, i: f"{split}/{wnid}",
    "per_class_resplit": lambda split, wnid, i: f"{'train' if i < 2 else 'val'}/{wnid}",
    "flat_and_nested": lambda split, wnid, i: f"a/b/{wnid}" if split == "test" else wnid,
}


def _write_folders(root, layout="few_shot_folders"):
    write_fake_miniimagenet(root, PER_CLASS, FOLDER_LAYOUTS[layout])


def _write_csv_layout(root):
    for split, wnids in SPLIT_CLASSES.items():
        rows = ["filename,label"]
        for wnid in wnids:
            for i in range(PER_CLASS):
                _save(root / "images" / _name(wnid, i), _color(wnid, i))
                rows.append(f"{_name(wnid, i)},{wnid}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")


def _load(root, split=None, **kwargs):
    kwargs = dict(image_size=SIZE, images_per_class=PER_CLASS, cache=False) | kwargs
    if split is None:
        return load_miniimagenet(root, **kwargs)
    return load_miniimagenet_split(root, split, **kwargs)


def _check_split(images, split, shift=0):
    assert images.images.shape == (len(SPLIT_CLASSES[split]), PER_CLASS, SIZE, SIZE, 3)
    assert images.images.dtype == np.uint8
    assert images.scale == pytest.approx(1 / 255)
    assert images.names == sorted(SPLIT_CLASSES[split])
    for c, wnid in enumerate(images.names):
        for i in range(PER_CLASS):
            want = np.broadcast_to(_color(wnid, i, shift if (c, i) == (0, 0) else 0), (8, 8, 3))
            np.testing.assert_array_equal(images.images[c, i], want)


def _write(root, layout):
    if layout == "csv":
        _write_csv_layout(root)
    else:
        _write_folders(root, layout)


@pytest.mark.parametrize("layout", ["csv", *FOLDER_LAYOUTS])
def test_every_layout_gives_the_official_split(tmp_path, layout):
    _write(tmp_path / "data", layout)
    # Hidden files and folders are skipped: macOS's "._" files, a stray copy in ".trash/".
    for folder in (tmp_path / "data").rglob("n01532829"):
        (folder / f"._{_name('n01532829', 0)}").write_bytes(b"not an image")
    _save(tmp_path / "data" / ".trash" / "n01532829" / "extra.png", (0, 0, 0))
    splits = _load(tmp_path / "data", num_workers=2)
    _check_split(splits.train, "train")
    _check_split(splits.test, "test")
    _check_split(_load(str(tmp_path / "data"), "val"), "val")
    files = find_miniimagenet(tmp_path / "data", images_per_class=PER_CLASS)
    assert len(files) == 100 and all(len(paths) == PER_CLASS for paths in files.values())


def test_classes_go_to_their_split_whatever_folder_holds_them(tmp_path):
    # Every class in a folder called "test": the shipped lists decide, not the folder names.
    write_fake_miniimagenet(tmp_path, PER_CLASS, lambda split, wnid, i: f"test/{wnid}")
    _check_split(_load(tmp_path).train, "train")


def test_a_file_name_found_in_two_folders_of_a_class_counts_once(tmp_path):
    _write_folders(tmp_path, "per_class_resplit")
    wnid = SPLIT_CLASSES["test"][0]
    _save(tmp_path / "copy" / wnid / _name(wnid, 1), _color(wnid, 1))
    _check_split(_load(tmp_path, "test"), "test")


def test_jpeg_images_already_at_size_are_kept(tmp_path):
    for wnids in SPLIT_CLASSES.values():
        for wnid in wnids:
            for i in range(PER_CLASS):
                (tmp_path / wnid).mkdir(exist_ok=True)
                Image.new("RGB", (84, 84), _color(wnid, i)).save(tmp_path / wnid / f"{i}.jpg")
    test = _load(tmp_path, "test", image_size=84)
    assert test.images.shape == (20, PER_CLASS, 84, 84, 3)
    want = np.broadcast_to(_color(test.names[1], 2), (84, 84, 3)).astype(int)
    assert np.abs(test.images[1, 2].astype(int) - want).max() <= 3  # JPEG rounding.


def test_missing_classes_are_named_with_their_count(tmp_path):
    _write_folders(tmp_path)
    gone = [*SPLIT_CLASSES["val"][:4], *SPLIT_CLASSES["test"][:3]]
    for wnid in gone:
        split = "val" if wnid in SPLIT_CLASSES["val"] else "test"
        for path in (tmp_path / split / wnid).iterdir():
            path.unlink()  # An empty class folder is no class.
    first = ", ".join(repr(w) for w in gone[:5])
    with pytest.raises(
        ValueError,
        match=rf"7 of its 100 classes are missing \(val 4, test 3\): \[{first}\] \.\.\..*"
        rf"Received: data_dir={tmp_path}, images_per_class=3",
    ):
        _load(tmp_path)


def test_short_and_long_classes_are_named_with_their_counts_and_folders(tmp_path):
    _write_folders(tmp_path, "per_class_resplit")
    short, long = SPLIT_CLASSES["train"][5], SPLIT_CLASSES["test"][0]
    (tmp_path / "val" / short / _name(short, 2)).unlink()
    _save(tmp_path / "val" / long / "extra.png", (0, 0, 0))
    with pytest.raises(
        ValueError,
        match=rf"2 classes do not have exactly 3 distinct images: {short} has 2 "
        rf"\(in train/{short}\); {long} has 4 \(in train/{long}, val/{long}\)\. Received",
    ):
        _load(tmp_path, "train")  # Every class is checked, whichever split is read.


def test_unknown_classes_are_named(tmp_path):
    _write_csv_layout(tmp_path)
    _save(tmp_path / "more" / "n99999999" / "x.png", (0, 0, 0))
    with pytest.raises(
        ValueError, match=r"1 WordNet ids are not Mini-ImageNet classes: n99999999 \(in more/n9"
    ):
        _load(tmp_path)


def test_missing_data_raises(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        _load(tmp_path / "nowhere")
    (tmp_path / "readme.txt").write_text("")
    with pytest.raises(ValueError, match=r"No Mini-ImageNet classes found.*Found: \['readme.txt'"):
        _load(tmp_path)


def test_csv_problems_raise(tmp_path):
    _write_csv_layout(tmp_path)
    wnid = SPLIT_CLASSES["train"][1]
    (tmp_path / "images" / _name(wnid, 2)).unlink()
    with pytest.raises(ValueError, match=r"1 of 192 images listed in train\.csv are missing"):
        _load(tmp_path)
    _save(tmp_path / "images" / _name(wnid, 2), _color(wnid, 2))
    (tmp_path / "val.csv").write_text("name,wnid\n")
    with pytest.raises(ValueError, match="val.csv must have the header 'filename,label'"):
        _load(tmp_path)


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="Valid splits"):
        _load(tmp_path, "validation")
    with pytest.raises(ValueError, match="images_per_class must be positive"):
        _load(tmp_path, images_per_class=0)


def test_the_cache_maps_decoded_splits_and_follows_changed_files(tmp_path):
    _write_folders(tmp_path / "data")
    cache = tmp_path / "cache"
    first = _load(tmp_path / "data", cache=True, cache_dir=cache)
    assert sorted(p.name.split("-")[1] for p in cache.iterdir()) == ["test", "train"]
    again = _load(tmp_path / "data", cache=True, cache_dir=cache)
    assert isinstance(again.train.images, np.memmap) and not again.train.images.flags.writeable
    _check_split(again.train, "train")
    np.testing.assert_array_equal(again.test.images, first.test.images)
    task = ClassificationTasks(again.train).sample(task_seeds(0, [0])[0], ways=5, shots=2)
    assert task.support_x.shape == (10, SIZE, SIZE, 3)  # The read-only map feeds the sampler.

    wnid = sorted(SPLIT_CLASSES["train"])[0]
    path = tmp_path / "data" / "train" / wnid / _name(wnid, 0)
    _save(path, _color(wnid, 0, shift=1))
    os.utime(path, ns=(1, 1))  # A new modification time, however coarse the file system's clock.
    changed = _load(tmp_path / "data", cache=True, cache_dir=cache)
    _check_split(changed.train, "train", shift=1)
    assert len(list(cache.glob("miniimagenet-train-*.npy"))) == 1  # The old entry is gone.


def test_a_broken_cache_entry_is_decoded_again(tmp_path):
    _write_folders(tmp_path / "data")
    cache = tmp_path / "cache"
    _load(tmp_path / "data", "val", cache=True, cache_dir=cache)
    (entry,) = cache.iterdir()
    entry.write_bytes(entry.read_bytes()[:-5])  # Truncated.
    _check_split(_load(tmp_path / "data", "val", cache=True, cache_dir=cache), "val")
    _check_split(_load(tmp_path / "data", "val", cache=True, cache_dir=cache), "val")


def test_an_unwritable_cache_warns_and_still_loads(tmp_path):
    _write_folders(tmp_path / "data")
    (tmp_path / "cache").write_text("a file, not a folder")
    with pytest.warns(UserWarning, match="Could not write the decoded-image cache"):
        val = _load(tmp_path / "data", "val", cache=True, cache_dir=tmp_path / "cache")
    _check_split(val, "val")
