import re

import numpy as np
import pytest
from PIL import Image

from keras_reptile.data import image_folder
from keras_reptile.data.preprocessing import load_image
from keras_reptile.data.tasks import ClassificationTasks


def write_class_folders(root, classes=6, per_class=4, sizes=((20, 12), (9, 15)), formats=None):
    """`classes` folders of solid-colour images: class c image i has colour
    (10 * c, 5 * i, 200), alternating sizes, PNG or JPEG and RGB or gray ("L") modes."""
    formats = formats or [("png", "RGB"), ("png", "L"), ("jpg", "RGB"), ("jpg", "L")]
    for c in range(classes):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix, mode = formats[(c + i) % len(formats)]
            image = Image.new("RGB", sizes[i % len(sizes)], (10 * c, 5 * i, 200)).convert(mode)
            image.save(folder / f"img{i:03d}.{suffix}")
    return root


def test_reads_mixed_sizes_formats_and_modes_as_the_server_prepares_files(tmp_path):
    root = write_class_folders(tmp_path / "data")
    (root / "class00" / "notes.txt").write_text("not an image")
    (root / "class00" / ".hidden.png").write_bytes(b"not read")
    splits = image_folder(root, image_size=8, channels=3, test_fraction=0.34, cache=False)
    assert splits.train.images.shape == (4, 4, 8, 8, 3)
    assert splits.test.images.shape == (2, 4, 8, 8, 3)
    assert splits.train.scale == pytest.approx(1 / 255)
    assert sorted(splits.train.names + splits.test.names) == [f"class{c:02d}" for c in range(6)]
    for split in (splits.train, splits.test):
        for c, name in enumerate(split.names):
            for i in range(4):
                path = next((root / name).glob(f"img{i:03d}.*"))
                served = load_image(path, (8, 8, 3))
                np.testing.assert_array_equal(split.images[c, i] * np.float32(1 / 255), served)


def test_gray_28px_images_are_omniglot_bits_and_other_gray_sizes_keep_levels(tmp_path):
    root = write_class_folders(tmp_path / "data", classes=3, per_class=2)
    bits = image_folder(root, image_size=28, channels=1, cache=False)
    assert bits.train.scale == 1.0 and set(np.unique(bits.train.images)) <= {0, 1}
    gray = image_folder(root, image_size=10, channels=1, cache=False)
    assert gray.train.images.shape[2:] == (10, 10, 1) and gray.train.images.max() > 1


def test_seed_split_is_deterministic_and_depends_on_the_seed(tmp_path):
    root = write_class_folders(tmp_path / "data", classes=10, per_class=2, sizes=((4, 4),))

    def test_names(seed):
        splits = image_folder(root, image_size=4, seed=seed, test_fraction=0.3, cache=False)
        return splits.test.names

    assert test_names(0) == test_names(0)
    assert len(test_names(0)) == 3
    assert any(test_names(s) != test_names(0) for s in range(1, 5))


def test_listed_split_by_names_or_by_train_and_test_folders(tmp_path):
    flat = write_class_folders(tmp_path / "flat", classes=5, per_class=3, sizes=((6, 6),))
    listed = image_folder(flat, image_size=6, test_classes=["class01", "class04"], cache=False)
    assert listed.test.names == ["class01", "class04"]
    assert listed.train.names == ["class00", "class02", "class03"]
    split = tmp_path / "split"
    write_class_folders(split / "train", classes=3, per_class=3, sizes=((6, 6),))
    (split / "test").mkdir()
    (split / "train" / "class02").rename(split / "test" / "class02")
    folders = image_folder(split, image_size=6, cache=False)
    assert folders.train.names == ["class00", "class01"] and folders.test.names == ["class02"]
    with pytest.raises(ValueError, match="split into train/ and test/ already"):
        image_folder(split, image_size=6, test_classes=["class00"], cache=False)


def test_rotations_add_three_rotated_classes_per_training_class(tmp_path):
    root = tmp_path / "data"
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(2):
            pixels = np.zeros((6, 6), np.uint8)
            pixels[0, : c + 1] = 255  # an asymmetric mark: rotations differ
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    splits = image_folder(
        root, image_size=6, channels=1, test_classes=["c2"], rotations=True, cache=False
    )
    assert splits.train.names[:4] == ["c0/rot0", "c0/rot90", "c0/rot180", "c0/rot270"]
    assert splits.train.num_classes == 8 and splits.test.names == ["c2"]
    np.testing.assert_array_equal(
        splits.train.images[1], np.rot90(splits.train.images[0], k=1, axes=(1, 2))
    )


def test_classes_are_trimmed_to_the_smallest_count(tmp_path):
    root = write_class_folders(tmp_path / "data", classes=4, per_class=5, sizes=((4, 4),))
    for i in (3, 4):
        next((root / "class02").glob(f"img{i:03d}.*")).unlink()
    splits = image_folder(root, image_size=4, cache=False)
    assert splits.train.images_per_class == splits.test.images_per_class == 3


def test_too_few_images_names_the_classes_and_counts(tmp_path):
    root = write_class_folders(tmp_path / "data", classes=4, per_class=3, sizes=((4, 4),))
    for i in (1, 2):
        next((root / "class03").glob(f"img{i:03d}.*")).unlink()
    with pytest.raises(ValueError, match=re.escape("'class03' has 1")) as error:
        image_folder(root, image_size=4, cache=False)
    assert "1 of 4 classes have fewer than 2 images" in str(error.value)
    with pytest.raises(ValueError, match="4 of 4 classes have fewer than 6 images"):
        image_folder(root, image_size=4, min_images=6, cache=False)


def test_too_few_classes_names_the_split_and_counts(tmp_path):
    root = write_class_folders(tmp_path / "data", classes=4, per_class=2, sizes=((4, 4),))
    with pytest.raises(ValueError, match="meta-test split has 1 of the 4 classes; tasks need at "
                       "least 2") as error:  # fmt: skip
        image_folder(root, image_size=4, min_classes=2, cache=False)
    assert "Received: test_fraction=0.2, seed=0, min_classes=2" in str(error.value)
    with pytest.raises(ValueError, match=r"not among the 4 classes.*test_classes=\['nope'\]"):
        image_folder(root, image_size=4, test_classes=["nope"], cache=False)


def test_missing_empty_or_classless_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        image_folder(tmp_path / "missing")
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"No class folders found.*Found: \['loose.png'\]"):
        image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="'empty' has 0"):
        image_folder(tmp_path)
    with pytest.raises(ValueError, match="channels must be 1 or 3|Received: input_shape"):
        image_folder(tmp_path, channels=2)


def test_unreadable_image_names_the_file(tmp_path):
    root = write_class_folders(tmp_path / "data", classes=2, per_class=2, sizes=((4, 4),))
    bad = root / "class01" / "aaa.png"  # sorts first: read, not trimmed away
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=re.escape(f"Received: path={bad}")):
        image_folder(root, image_size=4, cache=False)


def test_decoded_images_are_cached_and_a_changed_file_is_read_again(tmp_path):
    root = write_class_folders(tmp_path / "data", classes=3, per_class=2, sizes=((4, 4),))
    first = image_folder(root, image_size=4, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("folder-4px-3c-*.npy"))) == 1
    again = image_folder(root, image_size=4, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(first.train.images, again.train.images)
    path = next((root / "class00").glob("img000.*"))
    path.unlink()
    Image.new("RGB", (4, 4), (255, 255, 255)).save(root / "class00" / "img000.png")
    changed = image_folder(root, image_size=4, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("folder-4px-3c-*.npy"))) == 1
    assert max(changed.train.images.max(), changed.test.images.max()) == 255


def test_splits_feed_the_task_sampler(tmp_path):
    from keras_reptile.data.streams import task_seeds

    root = write_class_folders(tmp_path / "data", classes=6, per_class=3, sizes=((5, 5),))
    splits = image_folder(root, image_size=5, cache=False)
    tasks = ClassificationTasks(splits.train)
    tasks.check(3, 2)
    task = tasks.sample(task_seeds(0, [0])[0], ways=3, shots=2, queries=1)
    assert task.support_x.shape == (6, 5, 5, 3) and task.query_y.numpy().tolist() == [0, 1, 2]
    assert float(task.support_x.numpy().max()) <= 1.0
