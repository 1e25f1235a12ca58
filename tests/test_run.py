import threading

import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.config import Protocol, Recipe
from keras_reptile.data.tasks import ClassificationTasks
from keras_reptile.export.model_card import Measurement, ModelCard, WarmStart
from keras_reptile.export.saved_model import read_exported_state
from keras_reptile.run import read_run, recorded_results, run
from keras_reptile.training.results import (
    PERIODIC_RESULTS_FILE,
    RESULTS_FILE,
    read_measurements,
    record_measurements,
)
from tests.fakes import fake_class_images
from tests.training.test_summaries import read_scalars

# Adam in the inner loop, so the carried statistics travel through the export too; a constant
# meta step, so a run continued from an export can be compared with one that never stopped.
SINE = Recipe(
    sgd=False,
    learning_rate=0.01,
    meta_step=0.5,
    meta_step_final=0.5,
    meta_batch=2,
    meta_iters=4,
    inner_iters=2,
    eval_interval=0,
    checkpoint_interval=2,
)
PROTOCOL = Protocol(eval_samples=8, eval_iters=3, learning_rate=0.01)


def _run(recipe, tmp_path, name, protocol=PROTOCOL, **kwargs):
    kwargs.setdefault("export_dir", str(tmp_path / f"{name}_export"))
    return run(recipe, protocol, model_dir=str(tmp_path / name), name="sine", **kwargs)


def _card(export_dir, version=1) -> ModelCard:
    return ModelCard.read(str(export_dir / str(version)))


def test_warm_start_from_an_export_evaluates_and_exports_the_same_run(tmp_path):
    first = _run(SINE, tmp_path, "first")
    again = _run(
        SINE, tmp_path, "again", mode="evaluate", warm_start_from=str(tmp_path / "first_export")
    )
    assert again == first  # same weights, Adam statistics and step: the same measured numbers
    _run(SINE, tmp_path, "again", mode="export")
    card, source = _card(tmp_path / "again_export"), _card(tmp_path / "first_export")
    assert card.results == source.results and len(card.results) == 2  # test, from random init
    assert card.meta_iterations == 4
    assert card.warm_started_from == WarmStart("sine", 1, 4)
    one = read_exported_state(str(tmp_path / "first_export/1"))
    two = read_exported_state(str(tmp_path / "again_export"))  # base folder: latest version
    assert two.adam_step == one.adam_step > 0
    for a, b in zip(one.weights + one.adam_v, two.weights + two.adam_v):
        np.testing.assert_array_equal(a, b)


def test_warm_start_carries_the_cards_results_to_the_next_export(tmp_path):
    _run(SINE, tmp_path, "first")
    source = _card(tmp_path / "first_export")
    _run(SINE, tmp_path, "again", mode="export", warm_start_from=str(tmp_path / "first_export"))
    assert _card(tmp_path / "again_export").results == source.results
    # Another protocol measured on the same state joins them on the next version.
    other = PROTOCOL.replace(eval_iters=1)
    added = _run(SINE, tmp_path, "again", protocol=other, mode="evaluate")
    _run(SINE, tmp_path, "again", protocol=other, mode="export")
    card = _card(tmp_path / "again_export", version=2)
    assert set(card.results) == set(source.results) | set(added)
    assert len(card.results) == 4 and card.default_protocol == other


def test_warm_start_under_mirrored_gives_the_same_numbers(tmp_path):
    first = _run(SINE, tmp_path, "first")
    mirrored = SINE.replace(strategy="mirrored")  # one meta-batch of 2 tasks: one per replica
    again = _run(
        mirrored, tmp_path, "again", mode="evaluate", warm_start_from=str(tmp_path / "first_export")
    )
    assert again == first


def test_training_on_from_an_export_matches_a_run_that_never_stopped(tmp_path):
    _run(SINE.replace(meta_iters=2), tmp_path, "half")
    _run(SINE, tmp_path, "rest", warm_start_from=str(tmp_path / "half_export"))
    _run(SINE, tmp_path, "whole")
    rest = read_exported_state(str(tmp_path / "rest_export"))
    whole = read_exported_state(str(tmp_path / "whole_export"))
    assert rest.meta_iterations == whole.meta_iterations == 4
    assert rest.adam_step == whole.adam_step
    for a, b in zip(rest.weights + rest.adam_v, whole.weights + whole.adam_v):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_warm_start_keeps_an_existing_checkpoint(tmp_path, capsys):
    _run(SINE.replace(meta_iters=2), tmp_path, "other")
    _run(SINE, tmp_path, "run", mode="train")
    capsys.readouterr()
    _run(SINE, tmp_path, "run", mode="export", warm_start_from=str(tmp_path / "other_export"))
    assert "already holds a checkpoint at step 4" in capsys.readouterr().out
    assert _card(tmp_path / "run_export").meta_iterations == 4
    assert _card(tmp_path / "run_export").warm_started_from is None


@pytest.mark.parametrize(
    "config, match",
    [
        (SINE.replace(seed=1), "seed=0.*Received: seed=1"),
        (SINE.replace(sgd=True), "sgd=False.*Received: sgd=True"),
    ],
)
def test_warm_start_from_another_run_is_refused(tmp_path, config, match):
    _run(SINE.replace(meta_iters=2), tmp_path, "source")
    with pytest.raises(ValueError, match=match):
        _run(config, tmp_path, "run", warm_start_from=str(tmp_path / "source_export"))
    # The refused attempt left nothing behind that would stop the right run in the same folder.
    _run(SINE, tmp_path, "run", mode="export", warm_start_from=str(tmp_path / "source_export"))


def test_warm_start_from_a_folder_without_an_export_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="Expected a keras-reptile SavedModel.*Received: path="):
        _run(SINE, tmp_path, "run", warm_start_from=str(tmp_path / "empty"))


@pytest.mark.parametrize(
    "card, match",
    [
        ('{"meta_iterations": 1, "config": {}}', "Not a keras-reptile model card"),
        ("not json", "must be JSON"),
        (None, "No model card"),
    ],
)
def test_warm_start_from_another_packages_saved_model_is_refused(tmp_path, card, match):
    other = tmp_path / "other/1"
    tf.saved_model.save(tf.Module(), str(other))
    if card is not None:
        (other / "assets.extra").mkdir()
        (other / "assets.extra/model_card.json").write_text(card)
    with pytest.raises(ValueError, match=match):
        _run(SINE, tmp_path, "run", warm_start_from=str(tmp_path / "other"))


def test_warm_start_from_an_export_without_the_run_state_is_refused(tmp_path):
    _run(SINE.replace(meta_iters=2), tmp_path, "source")
    other = tmp_path / "other/1"
    tf.saved_model.save(tf.Module(), str(other))
    (other / "assets.extra").mkdir()
    card = (tmp_path / "source_export/1/assets.extra/model_card.json").read_text()
    (other / "assets.extra/model_card.json").write_text(card)
    with pytest.raises(ValueError, match="not written by this package's exporter"):
        _run(SINE, tmp_path, "run", warm_start_from=str(tmp_path / "other"))


def test_one_run_measured_with_two_protocols_exports_one_card_with_both(tmp_path):
    _run(SINE, tmp_path, "run", mode="train")
    five = PROTOCOL.replace(shots=5)
    _run(SINE, tmp_path, "run", protocol=five, mode="evaluate")
    _run(SINE, tmp_path, "run", mode="evaluate")
    _run(SINE, tmp_path, "run", protocol=five, mode="evaluate")  # again: replaces, never adds
    assert len(recorded_results(str(tmp_path / "run"))) == 4
    _run(SINE, tmp_path, "run", mode="export")
    card = _card(tmp_path / "run_export")
    assert sorted((m.split, m.protocol.shots) for m in card.results) == [
        ("test", 5),
        ("test", 10),
        ("test_from_random_init", 5),
        ("test_from_random_init", 10),
    ]
    # The run folder keeps the protocol it was created with as its default.
    assert card.default_protocol == PROTOCOL
    # Each protocol's final results are in TensorBoard too, under its shots.
    scalars = read_scalars(tmp_path / "run" / "eval")
    assert {tag for tag in scalars if tag.startswith("test/")} == {
        "test/mse/5_shot",
        "test/mse/10_shot",
    }
    assert all(steps[-1][0] == SINE.meta_iters for steps in scalars.values())
    assert read_run(str(tmp_path / "run"))[1].protocol == PROTOCOL


def test_results_of_an_earlier_step_stay_off_the_card(tmp_path):
    _run(SINE.replace(meta_iters=2), tmp_path, "run")
    _run(SINE, tmp_path, "run", mode="train")  # trains on to step 4; nothing measured there
    _run(SINE, tmp_path, "run", mode="export")
    assert [m.meta_iterations for m in recorded_results(str(tmp_path / "run"))] == [2, 2]
    card = _card(tmp_path / "run_export", version=2)
    assert card.meta_iterations == 4 and card.results == ()


def test_export_needs_no_data(tmp_path, monkeypatch):
    _run(SINE, tmp_path, "run", mode="train")
    import keras_reptile.run as run_module

    def no_data(*args, **kwargs):
        raise AssertionError("export read the data")

    monkeypatch.setattr(run_module, "load_tasks", no_data)
    _run(SINE, tmp_path, "run", mode="export")
    assert _card(tmp_path / "run_export").meta_iterations == 4


def test_periodic_evaluations_are_recorded_from_the_initialization_on(tmp_path):
    recipe = SINE.replace(eval_interval=2, eval_interval_samples=4)
    _run(recipe, tmp_path, "periodic", mode="train")
    measured = read_measurements(str(tmp_path / "periodic"), PERIODIC_RESULTS_FILE)
    assert [m.meta_iterations for m in measured] == [0, 2, 4]
    assert {(m.split, m.metric, m.num_tasks) for m in measured} == {("test", "mse", 4)}
    assert measured[0].protocol == PROTOCOL.replace(eval_samples=4)
    assert measured[-1].mean < measured[0].mean  # the curve learns
    # A resumed run measures again from its checkpoint; the file keeps one entry per step.
    _run(recipe.replace(meta_iters=6), tmp_path, "periodic", mode="train")
    measured = read_measurements(str(tmp_path / "periodic"), PERIODIC_RESULTS_FILE)
    assert [m.meta_iterations for m in measured] == [0, 2, 4, 6]


@pytest.mark.parametrize("train_classes", [False, True])
def test_periodic_evaluation_scores_training_classes_only_if_the_protocol_does(
    tmp_path, monkeypatch, train_classes
):
    import keras_reptile.run as run_module

    def fake_data(*args, **kwargs):
        return (
            ClassificationTasks(fake_class_images(seed=0)),
            ClassificationTasks(fake_class_images(seed=1)),
        )

    monkeypatch.setattr(run_module, "load_tasks", fake_data)
    recipe = Recipe(
        dataset="omniglot", model="omniglot_cnn", classes=3, train_shots=2, inner_batch=6,
        inner_iters=1, meta_batch=1, meta_iters=2, eval_interval=2, eval_interval_samples=2,
    )  # fmt: skip
    protocol = Protocol(shots=1, eval_iters=1, eval_batch=3, eval_train_classes=train_classes)
    _run(recipe, tmp_path, "run", protocol=protocol, mode="train")
    measured = read_measurements(str(tmp_path / "run"), PERIODIC_RESULTS_FILE)
    splits = ["test", "train"] if train_classes else ["test"]
    assert sorted({m.split for m in measured}) == splits
    assert len(measured) == 2 * 2 * len(splits)  # steps 0 and 2, both answers


def test_evaluations_side_by_side_lose_no_measurement(tmp_path):
    """Two evaluations of one run folder (say 1-shot and 5-shot) record their results in turn."""

    def record(split):
        for step in range(25):
            m = Measurement(split, PROTOCOL, "mse", 1.0, 0.1, 8, step)
            record_measurements(str(tmp_path), [m])

    workers = [threading.Thread(target=record, args=(s,)) for s in ("test", "train")]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(read_measurements(str(tmp_path))) == 50


def test_measurements_replace_the_same_split_protocol_and_step(tmp_path):
    def m(step, mean, split="test"):
        return Measurement(split, PROTOCOL, "mse", mean, 0.1, 8, step)

    record_measurements(str(tmp_path), [m(0, 3.0), m(2, 2.0)])
    record_measurements(str(tmp_path), [m(2, 1.5), m(2, 9.0, split="train")])
    assert read_measurements(str(tmp_path)) == [m(0, 3.0), m(2, 1.5), m(2, 9.0, split="train")]
    (tmp_path / RESULTS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="Cannot read the run's eval_results.json"):
        read_measurements(str(tmp_path))


def test_in_memory_arrays_train_evaluate_and_export_through_run(tmp_path):
    from keras_reptile.data import arrays

    images = fake_class_images(num_classes=8, per_class=4).images[..., 0]
    splits = arrays(images.reshape(-1, 8, 8), np.repeat(np.arange(8), 4), test_fraction=0.4)
    tasks = (ClassificationTasks(splits.train), ClassificationTasks(splits.test))
    recipe = Recipe(
        dataset="arrays", model="omniglot_cnn", classes=3, train_shots=2, inner_batch=6,
        inner_iters=1, meta_batch=1, meta_iters=2, eval_interval=0, test_fraction=0.4,
    )  # fmt: skip
    protocol = Protocol(shots=1, eval_iters=1, eval_batch=3, eval_samples=2)
    measured = _run(recipe, tmp_path, "run", protocol=protocol, tasks=tasks)
    assert {m.split for m in measured} == {"train", "test"}
    card = _card(tmp_path / "run_export")
    assert card.recipe.dataset == "arrays" and card.input_shape == (8, 8, 1)
    with pytest.raises(ValueError, match=r"pass the task sources to run\(..., tasks="):
        _run(recipe, tmp_path, "run", protocol=protocol, mode="evaluate")
    with pytest.raises(ValueError, match="Cannot draw 5-way tasks"):
        _run(recipe.replace(classes=5), tmp_path, "other", protocol=protocol, tasks=tasks)
