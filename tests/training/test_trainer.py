import os

import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.algorithms import meta_step_size, task_batches
from keras_reptile.config import Recipe
from keras_reptile.data.streams import Stream, stream_key
from keras_reptile.data.tasks import ClassificationTasks, SineTasks
from keras_reptile.run import build_stacked_model
from keras_reptile.training.strategy import make_strategy
from keras_reptile.training.trainer import MetaTrainer
from tests import oracle
from tests.fakes import fake_class_images

TINY = Recipe(
    dataset="omniglot",
    model="omniglot_cnn",
    classes=3,
    train_shots=3,
    inner_batch=4,
    inner_iters=3,
    learning_rate=0.01,
    sgd=True,
    meta_step=1.0,
    meta_step_final=0.0,
    meta_batch=4,
    meta_iters=4,
    eval_interval=0,
    checkpoint_interval=2,
    # Mirrored gives each replica half the tasks; one group keeps the kernels the same shape as on
    # one device (test_task_groups_... covers the groups).
    task_groups=1,
    # With seed 0 these fake tasks are ill-conditioned on some CPUs: on an AMD EPYC the plain
    # and stacked paths differ by 5e-6 after one meta-iteration and 5e-3 after four (likely an
    # activation within rounding of a ReLU kink, then BatchNorm on batches of 4), while seeds 1-4
    # agree to 1e-7 after four. Equal-but-rounded-differently paths need a well-conditioned start.
    seed=1,
)


def make_trainer(model_dir, config=TINY, strategy="default"):
    tasks = ClassificationTasks(fake_class_images(shape=(28, 28, 1)))
    model = build_stacked_model(config, tasks.input_shape)
    return MetaTrainer(config, model, make_strategy(strategy), str(model_dir), train_tasks=tasks)


def trained_weights(model_dir, **kwargs):
    trainer = make_trainer(model_dir, **kwargs)
    trainer.train()
    return trainer.state.numpy_weights(), trainer


def assert_trained_and_equal_to(trainer, expected, atol):
    start = trainer.model.initial_weights()
    got = trainer.state.numpy_weights()
    assert max(np.abs(a - s.numpy()).max() for a, s in zip(got, start)) > 1e-4  # it trained
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, np.asarray(b), atol=atol)


def assert_trained_and_equal(t1, t2, atol):
    assert_trained_and_equal_to(t1, t2.state.numpy_weights(), atol)


def test_mirrored_on_two_devices_matches_one_device(tmp_path):
    assert len(tf.config.list_logical_devices("CPU")) == 2
    _, t1 = trained_weights(tmp_path / "one")
    _, t2 = trained_weights(tmp_path / "two", strategy="mirrored")
    assert t2.strategy.num_replicas_in_sync == 2
    assert_trained_and_equal(t1, t2, atol=1e-5)


def test_one_device_strategy_matches_default(tmp_path):
    _, t1 = trained_weights(tmp_path / "default")
    _, t2 = trained_weights(tmp_path / "one", strategy="one_device")
    assert_trained_and_equal(t1, t2, atol=1e-6)


def test_mirrored_adam_carries_the_same_statistics(tmp_path):
    # Sine MLP: no BatchNorm, so no bias whose true gradient is zero and whose Adam step would
    # amplify float noise (conv biases before BatchNorm do exactly that, here as in the paper).
    config = Recipe(
        meta_iters=4,
        meta_batch=4,
        sgd=False,
        learning_rate=0.01,
        eval_interval=0,
        checkpoint_interval=2,
    )
    t1, t2 = (
        MetaTrainer(
            config,
            build_stacked_model(config, (1,)),
            make_strategy(strategy),
            str(tmp_path / strategy),
            train_tasks=SineTasks(),
        )
        for strategy in ("default", "mirrored")
    )
    t1.train()
    t2.train()
    assert_trained_and_equal(t1, t2, atol=1e-5)
    for a, b in zip(t1.state.adam_v, t2.state.adam_v):
        assert float(tf.reduce_max(a)) > 0
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-10)
    assert (
        float(t2.state.adam_step.numpy())
        == config.meta_iters * config.meta_batch * config.inner_iters
    )


@pytest.mark.parametrize("foml, foml_tail", [(False, 0), (True, 1)])
def test_one_meta_iteration_equals_the_plain_per_task_oracle(tmp_path, foml, foml_tail):
    # One meta-update: grouped and plain convolutions round differently (~1e-6 here), and this
    # tiny net amplifies any difference about tenfold per further meta-step, whatever its source.
    config = TINY.replace(foml=foml, foml_tail=foml_tail, meta_iters=1, checkpoint_interval=1)
    _, trainer = trained_weights(tmp_path / "fast", config=config)
    # The oracle draws the same tasks and mini-batches and trains them one at a time.
    plain = oracle.FunctionalModel(trainer.model.model, regression=False)
    theta = trainer.model.initial_weights()  # the Keras model now holds the trained ones
    delta_sum = [tf.zeros_like(w) for w in theta]
    for batches in _oracle_tasks(trainer, config, 0):
        delta, _, _ = oracle.task_update(
            plain, trainer.optimizer, theta, (), batches, config.learning_rate, foml
        )
        delta_sum = [a + b for a, b in zip(delta_sum, delta)]
    expected = [t + config.meta_step * d / config.meta_batch for t, d in zip(theta, delta_sum)]
    cancelled = {id(v) for v in _biases_before_batchnorm(trainer.model.model)}
    for var, got, want in zip(
        trainer.model.model.trainable_variables, trainer.state.weights, expected
    ):
        if id(var) not in cancelled:  # a bias BatchNorm cancels: noise in the oracle, 0 here
            np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def _biases_before_batchnorm(model):
    import keras

    layers = [la for la in model.layers if not isinstance(la, keras.layers.InputLayer)]
    return [
        a.bias
        for a, b in zip(layers, layers[1:])
        if isinstance(a, keras.layers.Conv2D) and isinstance(b, keras.layers.BatchNormalization)
    ]


def _oracle_tasks(trainer, config, step):
    """The `TaskBatches` of meta-iteration `step`, task by task, as the trainer draws them."""
    key = stream_key(config.seed, Stream.META_TRAIN)
    tasks = []
    for j in range(config.meta_batch):
        seed = tf.constant([key, step * config.meta_batch + j], tf.int64)
        sample_seed, batch_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        task = trainer.tasks.sample(sample_seed, config.classes, config.train_shots)
        tasks.append(
            task_batches(
                task.support_x, task.support_y, batch_seed, inner_batch=config.inner_batch,
                inner_iters=config.inner_iters, foml_tail=config.foml_tail, ways=config.classes,
            )
        )  # fmt: skip
    return tasks


SEQUENTIAL_SINE = Recipe(
    meta_iters=4,
    meta_batch=3,
    inner_iters=3,
    sgd=False,
    learning_rate=0.01,
    eval_interval=0,
    checkpoint_interval=4,
    inner_adam="sequential",
)


@pytest.mark.parametrize("foml, foml_tail", [(False, 0), (True, 0), (True, 5)])
def test_sequential_inner_adam_equals_the_official_loop(tmp_path, foml, foml_tail):
    # The sine MLP has no BatchNorm, so no bias whose gradient is pure float noise: Adam's
    # sign-like steps would amplify that over several meta-iterations.
    config = SEQUENTIAL_SINE.replace(foml=foml, foml_tail=foml_tail)
    trainer = MetaTrainer(
        config,
        build_stacked_model(config, (1,)),
        make_strategy("default"),
        str(tmp_path),
        train_tasks=SineTasks(),
    )
    plain = oracle.FunctionalModel(trainer.model.model, regression=True)
    theta = trainer.model.initial_weights()  # the Keras model now holds the trained ones
    state = trainer.optimizer.init_state(theta)
    for step in range(config.meta_iters):
        eps = meta_step_size(step, config.meta_iters, config.meta_step, config.meta_step_final)
        theta, state = oracle.official_meta_iteration(
            plain, trainer.optimizer, theta, state, _oracle_tasks(trainer, config, step),
            config.learning_rate, eps, foml,
        )  # fmt: skip
    trainer.train()
    assert_trained_and_equal_to(trainer, theta, atol=1e-6)
    for got, want in zip(trainer.state.adam_v, state.v):
        assert float(tf.reduce_max(want)) > 0
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    assert float(trainer.state.adam_step.numpy()) == float(state.step.numpy())
    assert float(state.step.numpy()) == config.meta_iters * config.meta_batch * config.inner_iters


def test_sequential_and_parallel_inner_adam_differ_only_in_the_carried_statistics(tmp_path):
    # One meta-iteration from zero statistics: the tasks' starting states differ, so the
    # weights do too; the parallel run carries the tasks' average, the sequential the last's.
    runs = {}
    for mode in ("parallel", "sequential"):
        config = SEQUENTIAL_SINE.replace(inner_adam=mode, meta_iters=1, checkpoint_interval=1)
        trainer = MetaTrainer(
            config,
            build_stacked_model(config, (1,)),
            make_strategy("default"),
            str(tmp_path / mode),
            train_tasks=SineTasks(),
        )
        trainer.train()
        runs[mode] = trainer
    plain = oracle.FunctionalModel(runs["parallel"].model.model, regression=True)
    theta = trainer.model.initial_weights()  # the Keras model now holds the trained ones
    optimizer = runs["parallel"].optimizer
    start = optimizer.init_state(theta)
    tasks = _oracle_tasks(runs["parallel"], runs["parallel"].recipe, 0)
    vs = [oracle.task_update(plain, optimizer, theta, start, b, 0.01)[1].v for b in tasks]
    averaged = [tf.add_n(list(v)) / len(vs) for v in zip(*vs)]
    for got, want in zip(runs["parallel"].state.adam_v, averaged):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)
    differ = [
        np.abs(a.numpy() - b.numpy()).max()
        for a, b in zip(runs["parallel"].state.weights, runs["sequential"].state.weights)
    ]
    assert max(differ) > 1e-4


def test_sequential_inner_adam_refuses_several_replicas(tmp_path):
    config = TINY.replace(sgd=False, inner_adam="sequential")
    with pytest.raises(ValueError, match="replicas=2"):
        make_trainer(tmp_path, config=config, strategy="mirrored")


def test_resuming_with_another_inner_adam_mode_raises(tmp_path):
    trained_weights(tmp_path, config=TINY.replace(sgd=False))
    with pytest.raises(ValueError, match="Received: inner_adam='sequential'"):
        make_trainer(tmp_path, config=TINY.replace(sgd=False, inner_adam="sequential")).restore()


@pytest.mark.parametrize("groups", [2, 3, 4])
def test_task_groups_match_one_stacked_network(tmp_path, groups):
    # One meta-update, as above: a one-task group convolves like the plain path and rounds so.
    config = TINY.replace(meta_iters=1, checkpoint_interval=1)
    _, one = trained_weights(tmp_path / "one", config=config)
    _, split = trained_weights(tmp_path / "split", config=config.replace(task_groups=groups))
    assert_trained_and_equal(one, split, atol=1e-5)


def test_meta_batch_must_divide_across_replicas(tmp_path):
    with pytest.raises(ValueError, match="Received: meta_batch=3"):
        make_trainer(tmp_path, config=TINY.replace(meta_batch=3), strategy="mirrored")


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    full, _ = trained_weights(tmp_path / "full")
    _, trainer = trained_weights(tmp_path / "cut")
    # Drop the final checkpoint, as if the process had died between steps 2 and 4.
    manager = trainer.manager
    last = manager.latest_checkpoint
    for suffix in (".index", ".data-00000-of-00001"):
        os.remove(last + suffix)
    tf.compat.v1.train.update_checkpoint_state(manager.directory, manager.checkpoints[0])
    resumed = make_trainer(tmp_path / "cut")
    assert resumed.restore() == 2
    resumed.train()
    for a, b in zip(full, resumed.state.numpy_weights()):
        np.testing.assert_array_equal(a, b)


def test_finished_run_is_not_retrained(tmp_path, capsys):
    weights, _ = trained_weights(tmp_path)
    again, trainer = trained_weights(tmp_path)
    assert "not retraining" in capsys.readouterr().out
    assert int(trainer.state.step) == TINY.meta_iters
    for a, b in zip(weights, again):
        np.testing.assert_array_equal(a, b)


def test_resuming_with_another_model_raises(tmp_path):
    trained_weights(tmp_path)
    with pytest.raises(ValueError, match="Received: classes=4"):
        make_trainer(tmp_path, config=TINY.replace(classes=4)).restore()


def test_checkpoint_holds_weights_adam_state_and_step(tmp_path):
    _, trainer = trained_weights(tmp_path, config=TINY.replace(sgd=False))
    names = {name for name, _ in tf.train.list_variables(trainer.manager.latest_checkpoint)}
    for part in (
        "state/step",
        "state/seed",
        "state/adam_step",
        "state/adam_v/0",
        "state/weights/0",
    ):
        assert any(n.startswith(part) for n in names), part


def test_train_runs_the_given_number_more_and_logs_readable_scalars(tmp_path, capsys):
    from tests.training.test_summaries import read_scalars

    config = TINY.replace(summary_interval=1, checkpoint_interval=1)
    trainer = make_trainer(tmp_path, config=config)
    assert trainer.train(num_iterations=3) == 3
    assert make_trainer(tmp_path, config=config).train(num_iterations=5) == config.meta_iters
    out = capsys.readouterr().out
    assert "ms/it, eta=" in out
    steps = [step for step, _ in read_scalars(tmp_path / "train")["meta_training_loss"]]
    assert steps[:3] == [1, 2, 3] and steps[-1] == config.meta_iters
    with pytest.raises(ValueError, match="Received: num_iterations=0"):
        trainer.train(num_iterations=0)
