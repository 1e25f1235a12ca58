import random

import numpy as np
import pytest

from keras_reptile.data.class_split import common_image_count, split_classes


def _images(classes=6, per_class=2, size=3):
    images = np.zeros((classes, per_class, size, size, 1), np.uint8)
    images[:, :, 0, 0, 0] = np.arange(classes)[:, None] + 1  # class index + 1 in a corner
    return images


def test_seed_split_shuffles_the_names_as_the_omniglot_split_does():
    names = [f"c{i}" for i in range(6)]
    splits = split_classes(_images(), names, scale=1.0, seed=4, test_fraction=0.5)
    order = list(range(6))
    random.Random(4).shuffle(order)
    assert splits.test.names == [names[i] for i in sorted(order[:3])]
    for c, name in enumerate(splits.test.names):
        assert splits.test.images[c, 0, 0, 0, 0] == int(name[1:]) + 1


def test_listed_split_and_rotations():
    splits = split_classes(
        _images(classes=3), ["a", "b", "c"], scale=1.0, test_classes=["b"], rotations=True
    )
    assert splits.test.names == ["b"]
    assert splits.train.names == [f"{n}/rot{a}" for n in "ac" for a in (0, 90, 180, 270)]
    marks = splits.train.images[:4, 0, :, :, 0]  # class a's four rotations move its mark
    assert [tuple(np.argwhere(m)[0]) for m in marks] == [(0, 0), (2, 0), (2, 2), (0, 2)]


def test_errors_name_what_was_received():
    with pytest.raises(ValueError, match="unique"):
        split_classes(_images(classes=2), ["a", "a"], scale=1.0)
    with pytest.raises(ValueError, match="meta-test split has 1 of the 6 classes"):
        split_classes(_images(), list("abcdef"), scale=1.0, min_classes=2)
    with pytest.raises(ValueError, match=r"'b' has 1.*min_images=3"):
        common_image_count({"a": 4, "b": 1}, 3, "path=x")
    assert common_image_count({"a": 4, "b": 3}, 3, "path=x") == 3
