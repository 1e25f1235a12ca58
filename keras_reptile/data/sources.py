"""Dataset name -> task sources for meta-training and meta-test classes."""

from __future__ import annotations

from keras_reptile.config import TFDS_PREFIX, Protocol, Recipe
from keras_reptile.data.tasks import ClassificationTasks, SineTasks

DATA_SOURCES = ("local", "tfds")


def load_tasks(
    recipe: Recipe,
    protocol: Protocol | None = None,
    data_dir: str | None = None,
    data_source: str = "local",
    tfds_manual_dir: str | None = None,
):
    """Returns `(train_tasks, test_tasks)` for `recipe.dataset`, checked to be large enough for
    the recipe's meta-training tasks and the protocol's test tasks.

    `data_source="tfds"` reads Omniglot through tensorflow-datasets (`data_dir` is then tfds's
    data directory, `tfds_manual_dir` the folder with the official zips if there is no internet).
    Your own data: `dataset="folder"` reads `data_dir` with `image_folder`, `"tfds:<name>"` the
    tensorflow-datasets dataset prepared in `data_dir` with `tfds_dataset`.
    """
    if data_source not in DATA_SOURCES:
        raise ValueError(
            f"Unknown data source. Expected one of {DATA_SOURCES}. "
            f"Received: data_source={data_source!r}"
        )
    if data_source == "tfds" and recipe.dataset != "omniglot":
        raise ValueError(
            "--data_source=tfds reads Omniglot through tensorflow-datasets; for another "
            f"tensorflow-datasets dataset pass --dataset={TFDS_PREFIX}<name>. "
            f"Received: data_source='tfds', dataset={recipe.dataset!r}"
        )
    if recipe.dataset == "sine":
        return SineTasks(), SineTasks()
    if recipe.dataset == "arrays":
        raise ValueError(
            "dataset='arrays' is read in Python: pass the task sources to run(..., tasks=(train, "
            "test)), for example ClassificationTasks of keras_reptile.data.arrays(images, "
            "labels). Received: dataset='arrays'"
        )
    if recipe.is_own_data:
        splits = _own_data(recipe, protocol, data_dir)
    elif recipe.dataset == "omniglot":
        from keras_reptile.data.omniglot import load_omniglot

        if not data_dir and data_source == "local":
            raise ValueError(
                "Omniglot needs --data_dir (the folder with the two official zips). "
                "Received: data_dir=None"
            )
        splits = load_omniglot(
            data_dir or "", seed=recipe.seed, source=data_source, tfds_manual_dir=tfds_manual_dir
        )
    elif recipe.dataset == "miniimagenet":
        from keras_reptile.data.miniimagenet import load_miniimagenet

        if not data_dir:
            raise ValueError("Mini-ImageNet needs --data_dir. Received: data_dir=None")
        splits = load_miniimagenet(data_dir)
    else:
        raise ValueError(f"Unknown dataset. Received: dataset={recipe.dataset!r}")
    train, test = ClassificationTasks(splits.train), ClassificationTasks(splits.test)
    check_tasks(recipe, protocol, train, test)
    return train, test


def check_tasks(recipe: Recipe, protocol: Protocol | None, train, test) -> None:
    """Raises `ValueError` if the recipe's meta-training tasks or the protocol's test tasks (and
    its train-class tasks, if scored) cannot be drawn from `train` and `test`."""
    train.check(recipe.classes, recipe.train_shots)
    if protocol is not None:
        test.check(recipe.classes, protocol.shots + 1)  # one query per class is held out
        if protocol.eval_train_classes:
            train.check(recipe.classes, protocol.shots + 1)


def _own_data(recipe: Recipe, protocol: Protocol | None, data_dir: str | None):
    """The user's images as splits whose classes and images suffice for the tasks' sizes."""
    shots = [recipe.train_shots] + ([protocol.shots + 1] if protocol is not None else [])
    options = dict(
        image_size=recipe.image_size,
        channels=recipe.channels,
        test_fraction=recipe.test_fraction,
        test_classes=recipe.test_classes or None,
        seed=recipe.seed,
        rotations=recipe.rotations,
        min_classes=recipe.classes,
        min_images=max(shots),
    )
    if recipe.dataset == "folder":
        from keras_reptile.data.folder_source import image_folder

        if not data_dir:
            raise ValueError(
                "--dataset=folder needs --data_dir (a folder of class sub-folders of images). "
                "Received: data_dir=None"
            )
        return image_folder(data_dir, **options)
    from keras_reptile.data.tfds_images import tfds_dataset

    name = recipe.dataset[len(TFDS_PREFIX) :]
    if not data_dir:
        raise ValueError(
            f"--dataset={recipe.dataset} needs --data_dir (the tensorflow-datasets data directory "
            "where the dataset is prepared; nothing is downloaded). Received: data_dir=None"
        )
    return tfds_dataset(name, data_dir=data_dir, **options)
