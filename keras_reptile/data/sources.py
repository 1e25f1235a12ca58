"""Dataset name -> task sources for meta-training and meta-test classes."""

from __future__ import annotations

from keras_reptile.config import Protocol, Recipe
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
    """
    if data_source not in DATA_SOURCES:
        raise ValueError(
            f"Unknown data source. Expected one of {DATA_SOURCES}. "
            f"Received: data_source={data_source!r}"
        )
    if recipe.dataset == "sine":
        return SineTasks(), SineTasks()
    if recipe.dataset == "omniglot":
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
    train.check(recipe.classes, recipe.train_shots)
    if protocol is not None:
        test.check(recipe.classes, protocol.shots + 1)  # one query per class is held out
        if protocol.eval_train_classes:
            train.check(recipe.classes, protocol.shots + 1)
    return train, test
