import contextlib
import io
import random
import zipfile
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from keras_reptile.data.omniglot import load_omniglot, split_characters
from keras_reptile.data.preprocessing import omniglot_bits
from tests.conftest import OMNIGLOT_DIR, needs_omniglot

# Small alphabets (14 and 20 characters), one from each official set.
SUBSET = {"images_background": "Blackfoot_(Canadian_Aboriginal_Syllabics)",
          "images_evaluation": "Angelic"}  # fmt: skip


@pytest.fixture(scope="module")
def real_splits():
    return load_omniglot(str(OMNIGLOT_DIR))


def _subset_members(set_name):
    """Yields (path inside the zip, PNG bytes) for the SUBSET alphabet of one official zip."""
    with zipfile.ZipFile(OMNIGLOT_DIR / f"{set_name}.zip") as archive:
        prefix = f"{set_name}/{SUBSET[set_name]}/"
        for name in sorted(archive.namelist()):
            if name.startswith(prefix) and name.endswith(".png"):
                yield name, archive.read(name)


def _extract_subset(root, *, merged):
    for set_name in SUBSET:
        for name, data in _subset_members(set_name):
            path = root / (name.split("/", 1)[1] if merged else name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def _write_fake_omniglot(root, chars_per_alphabet, images=20):
    """Writes a merged-layout Omniglot of blank 1-bit 105x105 PNGs."""
    for alphabet, num_chars in chars_per_alphabet.items():
        for c in range(1, num_chars + 1):
            char_dir = root / alphabet / f"character{c:02d}"
            char_dir.mkdir(parents=True)
            for i in range(images):
                Image.fromarray(np.ones((105, 105), bool)).save(char_dir / f"{c:04d}_{i:02d}.png")


@needs_omniglot
def test_tfds_with_the_projects_zips_explains_the_checksum_error_instead_of_a_traceback(tmp_path):
    # The two zips this project reads are re-packed: tfds's registered checksums do not match.
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in ("images_background.zip", "images_evaluation.zip"):
        (manual / name).symlink_to(OMNIGLOT_DIR / name)
    with pytest.raises(ValueError, match=r"would download the missing \['images_background_small1"):
        load_omniglot(str(tmp_path / "tfds"), source="tfds", tfds_manual_dir=str(manual))
    for name in ("images_background_small1.zip", "images_background_small2.zip"):
        with zipfile.ZipFile(manual / name, "w"):
            pass
    with pytest.raises(ValueError, match="not byte-identical.*--data_source=local") as error:
        load_omniglot(str(tmp_path / "tfds"), source="tfds", tfds_manual_dir=str(manual))
    assert "has wrong checksum" in str(error.value)


def test_tfds_source_unprepared_without_manual_dir_downloads_nothing(tmp_path):
    with pytest.raises(ValueError, match="not prepared in data_dir, and nothing is downloaded"):
        load_omniglot(str(tmp_path), source="tfds")
    assert not any(tmp_path.iterdir())


@needs_omniglot
@pytest.mark.slow
def test_official_split(real_splits):
    train, test = real_splits.train, real_splits.test
    assert test.names[:3] == [
        "Malayalam/character17",
        "Mkhedruli_(Georgian)/character07",
        "Japanese_(hiragana)/character33",
    ]
    assert (train.num_classes, test.num_classes) == (4800, 423)
    assert train.images.shape == (4800, 20, 28, 28, 1)
    assert test.images.shape == (423, 20, 28, 28, 1)
    assert train.images.dtype == np.uint8 and train.scale == test.scale == 1.0
    assert set(np.unique(train.images)) == set(np.unique(test.images)) == {0, 1}
    assert train.images.mean() > 0.5  # Background is 1, strokes 0: no inversion.
    characters = {name.rsplit("/", 1)[0] for name in train.names}
    assert len(characters) == 1200 and not characters & set(test.names)
    assert [name.rsplit("/", 1)[1] for name in train.names[:4]] == [
        "rot0",
        "rot90",
        "rot180",
        "rot270",
    ]


@needs_omniglot
@pytest.mark.slow
def test_train_classes_are_rotations_of_one_character(real_splits):
    images = real_splits.train.images
    for char in (0, 599, 1199):
        base = images[4 * char]
        for k in range(1, 4):
            np.testing.assert_array_equal(images[4 * char + k], np.rot90(base, k, axes=(1, 2)))


@needs_omniglot
def test_resize_and_rotation_match_official_pil_pipeline():
    name, data = next(_subset_members("images_evaluation"))
    bits = omniglot_bits(Image.open(io.BytesIO(data)))
    assert bits.shape == (28, 28) and bits.dtype == np.uint8
    for angle in (0, 90, 180, 270):
        official = np.array(Image.open(io.BytesIO(data)).resize((28, 28)).rotate(angle))
        np.testing.assert_array_equal(np.rot90(bits, angle // 90), official.astype(np.uint8))


def test_split_matches_random_seed_then_shuffle():
    names = [f"A{a}/character{c:02d}" for a in range(3) for c in range(1, 5)]
    images = np.arange(12, dtype=np.uint8)[:, None, None, None] * np.ones((1, 20, 28, 28), np.uint8)
    random.seed(3)
    official = list(names)
    random.shuffle(official)

    splits = split_characters(names, images, seed=3, num_train=8, augment=False)
    assert splits.train.names + splits.test.names == official
    np.testing.assert_array_equal(
        splits.test.images[:, 0, 0, 0, 0], [names.index(n) for n in official[8:]]
    )
    augmented = split_characters(names, images, seed=3, num_train=8, augment=True)
    assert augmented.train.num_classes == 32
    assert augmented.train.names[4] == f"{official[1]}/rot0"
    assert augmented.test.names == splits.test.names


@needs_omniglot
def test_extracted_and_merged_folders_match_zips(tmp_path):
    for set_name in SUBSET:
        with zipfile.ZipFile(tmp_path / f"{set_name}.zip", "w") as archive:
            for name, data in _subset_members(set_name):
                archive.writestr(name, data)
    _extract_subset(tmp_path / "extracted", merged=False)
    _extract_subset(tmp_path / "merged", merged=True)

    from_zips = load_omniglot(str(tmp_path), num_train=20)
    assert (from_zips.train.num_classes, from_zips.test.num_classes) == (80, 14)
    assert {n.split("/")[0] for n in from_zips.test.names} <= set(SUBSET.values())
    for layout in ("extracted", "merged"):
        loaded = load_omniglot(str(tmp_path / layout), num_train=20)
        for got, want in ((loaded.train, from_zips.train), (loaded.test, from_zips.test)):
            assert got.names == want.names
            np.testing.assert_array_equal(got.images, want.images)


def test_missing_directory_raises(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*Received: data_dir="):
        load_omniglot(str(tmp_path / "nowhere"))


def test_missing_zips_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("no data here")
    with pytest.raises(ValueError, match=r"images_background\.zip.*Found: \['notes.txt'\]"):
        load_omniglot(str(tmp_path))


def test_one_missing_set_raises(tmp_path):
    (tmp_path / "images_background").mkdir()
    with pytest.raises(ValueError, match="not images_evaluation.zip"):
        load_omniglot(str(tmp_path))


def test_wrong_image_count_raises(tmp_path):
    _write_fake_omniglot(tmp_path, {"Alpha": 2, "Beta": 1})
    next((tmp_path / "Beta" / "character01").iterdir()).unlink()
    with pytest.raises(ValueError, match="Beta/character01 has 19 images"):
        load_omniglot(str(tmp_path), num_train=2)


def test_fake_merged_layout_and_bad_arguments(tmp_path):
    _write_fake_omniglot(tmp_path, {"Alpha": 2, "Beta": 1})
    splits = load_omniglot(str(tmp_path), num_train=2)
    assert (splits.train.num_classes, splits.test.num_classes) == (8, 1)
    assert np.all(splits.train.images == 1)
    with pytest.raises(ValueError, match="Valid sources"):
        load_omniglot(str(tmp_path), source="kaggle")
    with pytest.raises(ValueError, match="num_train=3"):
        load_omniglot(str(tmp_path), num_train=3)


@contextlib.contextmanager
def _prepared_mock(**kwargs):
    """`tfds.testing.mock_data`, with the builder reporting itself prepared (nothing to read)."""
    import tensorflow_datasets as tfds

    with (
        tfds.testing.mock_data(**kwargs),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
    ):
        yield


def _mock_tfds(examples, alphabet_names=None):
    """Mocks tfds's Omniglot to return `examples` (dicts of numpy arrays), offline."""
    import tensorflow as tf

    def as_dataset(self, *args, **kwargs):
        if alphabet_names is not None:  # What the builder's _split_generators stores.
            self.info.features["alphabet"].names = alphabet_names
        stacked = {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}
        return tf.data.Dataset.from_tensor_slices(stacked)

    return _prepared_mock(as_dataset_fn=as_dataset)


def test_tfds_source_with_mock_data(tmp_path):
    rng = np.random.default_rng(0)
    examples = [
        {
            "image": np.repeat(rng.integers(0, 2, (105, 105, 1), dtype=np.uint8) * 255, 3, -1),
            "alphabet": np.int64(alphabet),
            "alphabet_char_id": np.int64(char),
            "label": np.int64(0),
        }
        for _ in range(20)
        for alphabet, char in ((7, 0), (2, 1), (2, 0), (40, 9))
    ]
    with _mock_tfds(examples):
        splits = load_omniglot(str(tmp_path), source="tfds", num_train=3)
    assert splits.train.images.shape == (12, 20, 28, 28, 1)
    assert splits.test.images.shape == (1, 20, 28, 28, 1)
    assert splits.train.images.dtype == np.uint8
    assert set(np.unique(splits.train.images)) == {0, 1}
    # Sorted by (alphabet, character) before the seed-0 shuffle, as the local reader does.
    characters = ["2/character01", "2/character02", "7/character01", "40/character10"]
    order = list(characters)
    random.Random(0).shuffle(order)
    assert splits.test.names == order[3:]
    assert splits.train.names[::4] == [f"{name}/rot0" for name in order[:3]]


def test_tfds_source_with_random_mock_data_checks_image_count(tmp_path):
    with _prepared_mock(num_examples=10):
        with pytest.raises(ValueError, match="images; every character needs 20"):
            load_omniglot(str(tmp_path), source="tfds")


@needs_omniglot
@pytest.mark.slow
def test_tfds_source_matches_local_on_real_images(tmp_path):
    import tensorflow as tf

    with zipfile.ZipFile(OMNIGLOT_DIR / "images_background.zip") as background:
        with zipfile.ZipFile(OMNIGLOT_DIR / "images_evaluation.zip") as evaluation:
            all_alphabets = {
                name.split("/")[1]
                for archive in (background, evaluation)
                for name in archive.namelist()
                if name.count("/") == 3 and name.endswith(".png")
            }
    alphabet_names = sorted(all_alphabets)  # As the tfds builder's ClassLabel names.
    examples = []
    for set_name in SUBSET:
        for name, data in _subset_members(set_name):
            _, alphabet, char, _ = name.split("/")
            examples.append(
                {
                    # tfds stores the PNG bytes and decodes them with 3 channels.
                    "image": tf.io.decode_png(data, channels=3).numpy(),
                    "alphabet": np.int64(alphabet_names.index(alphabet)),
                    "alphabet_char_id": np.int64(int(char[len("character") :]) - 1),
                    "label": np.int64(0),
                }
            )
    examples.reverse()  # tfds records are not in folder order.
    _extract_subset(tmp_path / "merged", merged=True)

    with _mock_tfds(examples, alphabet_names):
        from_tfds = load_omniglot(str(tmp_path / "tfds"), source="tfds", num_train=20)
    local = load_omniglot(str(tmp_path / "merged"), num_train=20)
    for got, want in ((from_tfds.train, local.train), (from_tfds.test, local.test)):
        assert got.names == want.names
        # Images within a character come in record order (reversed here).
        np.testing.assert_array_equal(got.images, want.images[:, ::-1])
