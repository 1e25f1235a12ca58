import numpy as np
import pytest
from PIL import Image

from keras_reptile.data.miniimagenet import load_miniimagenet, load_miniimagenet_split

# A tiny stand-in for the 64/16/20 split: 3 train, 2 val and 2 test classes of 4 images.
CLASSES = {
    "train": ["n01532829", "n01558993", "n01704323"],
    "val": ["n01855672", "n02091244"],
    "test": ["n01930112", "n01981276"],
}
EXPECTED = (3, 2, 2)
IMAGES_PER_CLASS = 4


def _color(wnid, index):
    """A distinct solid colour per image, so tests can check where each image landed."""
    seed = int(wnid[1:]) + index
    return (seed % 251, (seed * 7) % 251, (seed * 13) % 251)


def _save(path, wnid, index, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, _color(wnid, index)).save(path, "PNG")


def _write_csv_layout(root, *, file_format="png"):
    (root / "images").mkdir()
    for split, wnids in CLASSES.items():
        rows = ["filename,label"]
        for wnid in wnids:
            for i in range(IMAGES_PER_CLASS):
                name = f"{wnid}{i:08d}.jpg"
                if file_format == "png":  # PNG bytes behind a .jpg name: lossless colours.
                    _save(root / "images" / name, wnid, i)
                else:
                    Image.new("RGB", (84, 84), _color(wnid, i)).save(root / "images" / name, "JPEG")
                rows.append(f"{name},{wnid}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")


def _write_folder_layout(root):
    for split, wnids in CLASSES.items():
        for wnid in wnids:
            for i in range(IMAGES_PER_CLASS):
                _save(root / split / wnid / f"{wnid}_{i:04d}.png", wnid, i)


def _load(root, split=None, **kwargs):
    kwargs = dict(image_size=8, expected_classes=EXPECTED, **kwargs)
    if split is None:
        return load_miniimagenet(str(root), **kwargs)
    return load_miniimagenet_split(str(root), split, **kwargs)


def _check_split(images, split):
    assert images.images.shape == (len(CLASSES[split]), IMAGES_PER_CLASS, 8, 8, 3)
    assert images.images.dtype == np.uint8
    assert images.scale == pytest.approx(1 / 255)
    assert images.names == sorted(CLASSES[split])
    for c, wnid in enumerate(images.names):
        for i in range(IMAGES_PER_CLASS):
            np.testing.assert_array_equal(
                images.images[c, i], np.broadcast_to(_color(wnid, i), (8, 8, 3))
            )


@pytest.mark.parametrize("layout", ["csv", "folders"])
def test_loads_both_layouts(tmp_path, layout):
    if layout == "csv":
        _write_csv_layout(tmp_path)
    else:
        _write_folder_layout(tmp_path)
    splits = _load(tmp_path, num_workers=2)
    _check_split(splits.train, "train")
    _check_split(splits.test, "test")
    _check_split(_load(tmp_path, "val"), "val")


def test_jpeg_images_already_at_size_are_kept(tmp_path):
    _write_csv_layout(tmp_path, file_format="jpeg")
    test = load_miniimagenet_split(str(tmp_path), "test", expected_classes=EXPECTED)
    assert test.images.shape == (2, IMAGES_PER_CLASS, 84, 84, 3)
    want = np.broadcast_to(_color(test.names[1], 2), (84, 84, 3)).astype(int)
    assert np.abs(test.images[1, 2].astype(int) - want).max() <= 3  # JPEG rounding.


def test_missing_csv_and_folders_raise(tmp_path):
    _write_csv_layout(tmp_path)
    (tmp_path / "val.csv").unlink()
    with pytest.raises(ValueError, match=r"split 'val' not found.*val\.csv.*Found: \["):
        _load(tmp_path, "val")
    with pytest.raises(ValueError, match="does not exist"):
        _load(tmp_path / "nowhere")


def test_missing_images_raise(tmp_path):
    _write_csv_layout(tmp_path)
    (tmp_path / "images" / f"{CLASSES['train'][1]}00000002.jpg").unlink()
    with pytest.raises(ValueError, match=r"1 of 12 images listed in train\.csv are missing"):
        _load(tmp_path)


def test_too_few_classes_raise(tmp_path):
    _write_folder_layout(tmp_path)
    with pytest.raises(ValueError, match="'train' has 3 classes, expected 64"):
        load_miniimagenet(str(tmp_path))


def test_unequal_image_counts_raise(tmp_path):
    _write_folder_layout(tmp_path)
    wnid = CLASSES["test"][0]
    (tmp_path / "test" / wnid / f"{wnid}_0000.png").unlink()
    with pytest.raises(ValueError, match=f"found 3 in {wnid} but 4 in {CLASSES['test'][1]}"):
        _load(tmp_path, "test")


def test_unknown_split_raises(tmp_path):
    with pytest.raises(ValueError, match="Valid splits"):
        _load(tmp_path, "validation")
