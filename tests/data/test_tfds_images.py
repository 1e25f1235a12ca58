import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_reptile.data import tfds_dataset
from keras_reptile.data.preprocessing import load_image

CLASSES = ("circle", "square", "star", "wave", "zigzag")


class TinyShapes(tfds.core.GeneratorBasedBuilder):
    """Five classes of three solid-colour images, of two sizes, in two splits: built offline."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(range(2)),
            "test": self._generate_examples(range(2, 3)),
        }

    def _generate_examples(self, indices):
        for c in range(len(CLASSES)):
            for i in indices:
                size = (6, 9) if i % 2 else (10, 10)
                image = np.zeros((*size, 3), np.uint8) + np.uint8(40 * c + i)
                yield f"{c}-{i}", {"image": image, "label": c}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = TinyShapes(data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return data_dir


def test_reads_every_split_grouped_by_label_name(prepared):
    splits = tfds_dataset(
        "tiny_shapes", data_dir=prepared, image_size=4, channels=3, test_classes=["star"]
    )
    assert splits.test.names == ["star"]
    assert splits.train.names == ["circle", "square", "wave", "zigzag"]
    assert splits.train.images.shape == (4, 3, 4, 4, 3)  # both splits' examples pooled
    values = sorted(np.unique(splits.test.images).tolist())
    assert values == [80, 81, 82]  # star is class 2: 40 * 2 + image index


def test_images_go_through_the_servers_decode_path(prepared, tmp_path):
    from PIL import Image

    splits = tfds_dataset("tiny_shapes", data_dir=prepared, image_size=3, channels=1, seed=1)
    path = tmp_path / "x.png"
    Image.fromarray(np.full((6, 9, 3), 41, np.uint8)).save(path)
    served = load_image(path, (3, 3, 1))
    stored = splits.train.images.reshape(-1, 3, 3, 1) * np.float32(splits.train.scale)
    assert any(np.array_equal(image, served) for image in stored)


def test_rotations_and_seed_split(prepared):
    a = tfds_dataset("tiny_shapes", data_dir=prepared, image_size=4, rotations=True, seed=2)
    b = tfds_dataset("tiny_shapes", data_dir=prepared, image_size=4, rotations=True, seed=2)
    assert a.test.names == b.test.names and len(a.test.names) == 1
    assert a.train.num_classes == 16


def test_unprepared_or_unknown_datasets_and_features_are_refused(prepared, tmp_path):
    with pytest.raises(ValueError, match="not prepared in data_dir, and nothing is downloaded"):
        tfds_dataset("mnist", data_dir=tmp_path)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="has no dataset 'no_such_dataset_xyz'"):
        tfds_dataset("no_such_dataset_xyz", data_dir=tmp_path)
    with pytest.raises(ValueError, match="needs|local data_dir"):
        tfds_dataset("tiny_shapes", data_dir="")
    with pytest.raises(ValueError, match=r"no feature 'picture'.*\['image', 'label'\]"):
        tfds_dataset("tiny_shapes", data_dir=prepared, image_key="picture")
