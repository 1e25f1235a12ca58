import numpy as np
import pytest

from keras_reptile.data import arrays


def _labelled(classes=5, per_class=3, shape=(4, 4)):
    images = np.zeros((classes * per_class, *shape), np.uint8)
    labels = np.repeat(np.arange(classes), per_class)
    for n, label in enumerate(labels):
        images[n] = 10 * label + n % per_class  # class and position, to check where it landed
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    return images[order], labels[order]


def test_groups_by_label_in_array_order():
    images, labels = _labelled()
    splits = arrays(images, labels, test_classes=[3])
    assert splits.train.names == ["0", "1", "2", "4"] and splits.test.names == ["3"]
    assert splits.train.images.shape == (4, 3, 4, 4, 1)
    for split in (splits.train, splits.test):
        for c, name in enumerate(split.names):
            expected = images[labels == int(name)]
            np.testing.assert_array_equal(split.images[c, ..., 0], expected)


def test_class_names_and_string_labels():
    images, labels = _labelled(classes=4)
    names = ["ant", "bee", "cat", "dog"]
    splits = arrays(images, labels, class_names=names, test_classes=["cat"])
    assert splits.test.names == ["cat"] and splits.train.names == ["ant", "bee", "dog"]
    by_str = arrays(images, [names[i] for i in labels], test_classes=["dog"])
    assert by_str.test.names == ["dog"]


def test_seed_split_rotations_and_scale():
    images, labels = _labelled(classes=10, per_class=2)
    a = arrays(images, labels, seed=3, test_fraction=0.2, rotations=True, scale=1.0)
    b = arrays(images, labels, seed=3, test_fraction=0.2, rotations=True, scale=1.0)
    assert a.test.names == b.test.names and len(a.test.names) == 2
    assert a.train.num_classes == 32 and a.train.scale == 1.0


def test_bad_inputs_say_what_was_expected():
    images, labels = _labelled()
    with pytest.raises(ValueError, match="uint8 array"):
        arrays(images.astype(np.float32), labels)
    with pytest.raises(ValueError, match="one label per image"):
        arrays(images, labels[:-1])
    keep = np.ones(len(labels), bool)
    keep[np.flatnonzero(labels == 4)[:2]] = False  # class 4 keeps one image
    with pytest.raises(ValueError, match="1 of 5 classes have fewer than 2 images.*'4' has 1"):
        arrays(images[keep], labels[keep])
    with pytest.raises(ValueError, match="test_fraction must be between 0 and 1"):
        arrays(images, labels, test_fraction=1.0)
    with pytest.raises(ValueError, match="meta-training split has 0 of the 5 classes"):
        arrays(images, labels, test_classes=[0, 1, 2, 3, 4])
