import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_reptile
from keras_reptile.algorithms import StackedModel
from keras_reptile.config import Protocol, Recipe
from keras_reptile.data.tasks import ClassificationTasks
from keras_reptile.export.model_card import ModelCard
from keras_reptile.task_kind import CLASSIFICATION
from keras_reptile.training.strategy import make_strategy
from keras_reptile.training.trainer import MetaTrainer
from tests.fakes import fake_class_images

RECIPE = Recipe(
    dataset="omniglot",
    classes=3,
    train_shots=3,
    inner_batch=4,
    inner_iters=2,
    learning_rate=0.01,
    meta_batch=2,
    meta_iters=8,
    eval_interval=2,
    eval_interval_samples=4,
    checkpoint_interval=4,
    summary_interval=1,
    task_groups=1,
    seed=1,
)
PROTOCOL = Protocol(shots=2, eval_iters=2, eval_batch=6, learning_rate=0.01, eval_samples=4)


def user_model(seed=3, filters=4):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(filters, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.AveragePooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ],
        name="my_net",
    )


def tasks(seed=0):
    return ClassificationTasks(fake_class_images(num_classes=8, per_class=6, seed=seed))


def learner(model_dir, model=None, **changes):
    return keras_reptile.Reptile(
        model or user_model(), model_dir=str(model_dir), recipe=RECIPE, protocol=PROTOCOL,
        name="mine", **changes,
    )  # fmt: skip


def test_fit_returns_a_history_per_epoch_and_trains_as_the_trainer_does(tmp_path):
    reptile = learner(tmp_path / "api")
    history = reptile.fit(tasks(), validation_tasks=tasks(1), verbose=0)
    assert history.epoch == [0, 1, 2, 3]  # 8 meta-iterations, one epoch per eval_interval
    assert set(history.history) == {
        "loss",
        "meta_step_size",
        "val_test_non_transductive_accuracy",
        "val_test_transductive_accuracy",
    }
    assert reptile.step == 8
    # The same recipe and initialization through the driver directly: the same weights.
    recipe = RECIPE.replace(model="my_net")
    trainer = MetaTrainer(
        recipe, StackedModel(user_model(), CLASSIFICATION), make_strategy("default"),
        str(tmp_path / "driver"), train_tasks=tasks(),
    )  # fmt: skip
    trainer.train()
    for a, b in zip(reptile.trainer().state.numpy_weights(), trainer.state.numpy_weights()):
        np.testing.assert_array_equal(a, b)


def test_fit_in_parts_resumes_bit_exactly(tmp_path):
    whole = learner(tmp_path / "whole")
    whole.fit(tasks(), verbose=0)
    parts = learner(tmp_path / "parts")
    assert parts.fit(tasks(), 3, verbose=0).epoch == [0, 1]  # epochs 0 and (part of) 1
    again = learner(tmp_path / "parts")  # a new process would do this
    assert again.step == 3
    again.fit(tasks(), verbose=0)
    assert again.step == 8
    for a, b in zip(whole.trainer().state.numpy_weights(), again.trainer().state.numpy_weights()):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_stops_at_an_epoch_end_checkpointed(tmp_path):
    reptile = learner(tmp_path / "run")
    stop = keras.callbacks.EarlyStopping(monitor="loss", min_delta=1e9, patience=1)
    history = reptile.fit(tasks(), callbacks=[stop], verbose=0)
    assert history.epoch == [0, 1]
    assert reptile.step == 4
    assert learner(tmp_path / "run").step == 4  # the stop was checkpointed


def test_callbacks_see_the_current_initialization_in_the_keras_model(tmp_path):
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append([v.numpy().copy() for v in self.model.trainable_variables])

    reptile = learner(tmp_path / "run")
    reptile.fit(tasks(), 4, callbacks=[Record()], verbose=0)
    assert len(seen) == 2
    for a, b in zip(seen[-1], reptile.trainer().state.numpy_weights()):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(seen[0], seen[1]))


def test_keras_tensorboard_callback_writes_epoch_logs(tmp_path):
    reptile = learner(tmp_path / "run")
    logdir = tmp_path / "tb"
    reptile.fit(tasks(), 4, callbacks=[keras.callbacks.TensorBoard(str(logdir))], verbose=0)
    tags = set()
    for path in glob.glob(str(logdir / "train" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value}
    assert "epoch_loss" in tags


def test_model_checkpoint_saves_the_current_initialization(tmp_path):
    reptile = learner(tmp_path / "run")
    path = tmp_path / "init_{epoch}.weights.h5"
    save = keras.callbacks.ModelCheckpoint(str(path), save_weights_only=True)
    reptile.fit(tasks(), 4, callbacks=[save], verbose=0)
    saved = user_model(seed=9)  # another initialization, overwritten by the file
    saved.load_weights(str(tmp_path / "init_2.weights.h5"))
    for a, b in zip(saved.trainable_weights, reptile.trainer().state.numpy_weights()):
        np.testing.assert_array_equal(a.numpy(), b)


def test_backup_and_restore_is_refused_with_what_to_do(tmp_path):
    reptile = learner(tmp_path / "run")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(ValueError, match="resumes from it bit-exactly"):
        reptile.fit(tasks(), callbacks=[backup])


def test_another_model_in_the_same_folder_is_refused(tmp_path):
    learner(tmp_path / "run")
    with pytest.raises(ValueError, match="another Keras model"):
        learner(tmp_path / "run", model=user_model(filters=5))


def test_evaluate_export_and_warm_start(tmp_path):
    reptile = learner(tmp_path / "run")
    reptile.fit(tasks(), 4, verbose=0)
    scores = reptile.evaluate(tasks(1))
    assert set(scores) == {"non_transductive", "transductive"}
    assert scores["transductive"].num_tasks == PROTOCOL.eval_samples
    path = reptile.export(str(tmp_path / "export"))
    card = ModelCard.read(path)
    assert card.meta_iterations == 4 and card.recipe.model == "my_net"
    assert card.keras_config == json.loads(reptile.model.model.to_json())
    loaded = tf.saved_model.load(path)
    assert "adapt_and_predict" in loaded.signatures
    # A fresh run folder starts from the export and trains on exactly as the original does.
    other = learner(tmp_path / "warm")
    assert other.warm_start(path) == 4
    other.fit(tasks(), 2, verbose=0)
    reptile.fit(tasks(), 2, verbose=0)
    for a, b in zip(reptile.trainer().state.numpy_weights(), other.trainer().state.numpy_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_non_keras_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="must be a keras.Model"):
        keras_reptile.Reptile("omniglot_cnn", model_dir=str(tmp_path))


def test_fomaml_sets_foml(tmp_path):
    fomaml = keras_reptile.FOMAML(user_model(), model_dir=str(tmp_path), recipe=RECIPE)
    assert fomaml.recipe.foml and fomaml.recipe.algorithm == "fomaml"
    assert os.path.exists(tmp_path / "model.json")


def test_own_arrays_feed_fit_and_evaluate(tmp_path):
    from keras_reptile.data import arrays

    images = fake_class_images(num_classes=8, per_class=6).images.reshape(-1, 8, 8)
    splits = arrays(images, np.repeat(np.arange(8), 6), test_fraction=0.4)
    reptile = learner(tmp_path / "own", dataset="arrays", test_fraction=0.4, meta_iters=2)
    reptile.fit(ClassificationTasks(splits.train), verbose=0)
    scores = reptile.evaluate(ClassificationTasks(splits.test), num_tasks=2)
    assert scores["non_transductive"].num_tasks == 2
