"""The task kinds: each one's loss, outputs, scores and target checks, against values by hand."""

import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.config import Recipe
from keras_reptile.export import signatures as sig
from keras_reptile.task_kind import (
    CLASSIFICATION,
    KINDS,
    REGRESSION,
    by_inputs,
    by_metric,
    by_name,
    task_kind_of,
)

LOGITS = np.array([[[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], np.float32)  # [T=1, Q=2, 3]


@pytest.mark.parametrize(
    "dataset, kind",
    [("sine", REGRESSION), ("omniglot", CLASSIFICATION), ("folder", CLASSIFICATION),
     ("tfds:mnist", CLASSIFICATION)],
)  # fmt: skip
def test_the_dataset_decides_the_kind(dataset, kind):
    assert task_kind_of(dataset) is kind


def test_a_recipe_has_its_datasets_kind():
    assert Recipe().task_kind is REGRESSION
    assert Recipe(dataset="omniglot", model="omniglot_cnn", classes=5).task_kind is CLASSIFICATION


def test_regression_has_one_way():
    REGRESSION.check_ways(1)
    CLASSIFICATION.check_ways(20)
    with pytest.raises(ValueError, match="Received: classes=2"):
        REGRESSION.check_ways(2)
    with pytest.raises(ValueError, match="Received: classes=2"):
        Recipe(classes=2).validate()


def test_classification_loss_is_the_cross_entropy_summed_over_the_batch():
    labels = np.array([0, 2], np.int32)
    logits = LOGITS[0]
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -(log_softmax[0, 0] + log_softmax[1, 2])
    np.testing.assert_allclose(CLASSIFICATION.loss(logits, labels), expected, rtol=1e-6)


def test_regression_loss_is_the_mean_squared_error():
    outputs = np.array([[1.0], [3.0]], np.float32)
    targets = np.array([[0.0], [1.0]], np.float32)
    assert float(REGRESSION.loss(outputs, targets)) == pytest.approx((1 + 4) / 2)


def test_served_outputs_are_the_kinds_outputs():
    served = CLASSIFICATION.served(tf.constant(LOGITS))
    assert tuple(served) == CLASSIFICATION.outputs
    np.testing.assert_array_equal(served[sig.LOGITS], LOGITS)
    np.testing.assert_allclose(served[sig.PROBABILITIES], tf.nn.softmax(LOGITS))
    np.testing.assert_array_equal(served[sig.CLASSES], [[0, 2]])
    assert served[sig.CLASSES].dtype == sig.OUTPUT_DTYPES[sig.CLASSES]
    outputs = tf.constant([[[0.5]]])
    assert tuple(REGRESSION.served(outputs)) == REGRESSION.outputs == (sig.PREDICTIONS,)


def test_scores_are_accuracy_and_mean_squared_error():
    right_and_wrong = CLASSIFICATION.score(tf.constant(LOGITS), tf.constant([[0, 1]], tf.int32))
    np.testing.assert_array_equal(right_and_wrong, [0.5])
    outputs = tf.constant([[[1.0], [3.0]], [[0.0], [0.0]]])
    targets = tf.constant([[[0.0], [1.0]], [[2.0], [0.0]]])
    np.testing.assert_allclose(REGRESSION.score(outputs, targets), [2.5, 2.0])


def test_answers_and_metrics_name_the_results():
    assert [a.name for a in CLASSIFICATION.answers] == ["non_transductive", "transductive"]
    assert [a.transductive for a in CLASSIFICATION.answers] == [False, True]
    assert [a.name for a in REGRESSION.answers] == ["mse"]
    assert CLASSIFICATION.transductive_option and not REGRESSION.transductive_option
    assert CLASSIFICATION.format(0.9512, 0.0021) == "95.12 +- 0.21 %"
    assert REGRESSION.format(0.25, 0.01) == "MSE 0.2500 +- 0.0100"


def test_labels_are_integers_in_range():
    labels = CLASSIFICATION.targets([0, 4, 2], ways=5)
    assert labels.dtype == np.int32 and labels.tolist() == [0, 4, 2]
    with pytest.raises(ValueError, match=r"\[0, 5\). Received: support_y in \[0, 5\]"):
        CLASSIFICATION.targets([0, 5], ways=5)
    with pytest.raises(ValueError, match="Received: support_y.dtype=float"):
        CLASSIFICATION.targets([0.0, 1.0], ways=5)
    np.testing.assert_array_equal(
        CLASSIFICATION.outside(np.array([[-1, 0], [4, 5]]), 5), [[True, False], [False, True]]
    )


def test_regression_targets_are_one_float_per_example():
    targets = REGRESSION.targets([0.5, -1, 2], ways=1)
    assert targets.dtype == np.float32 and targets.shape == (3, 1)
    assert not REGRESSION.outside(targets, 1).any() and REGRESSION.graph_checks(targets, 1) == []


def test_graph_checks_refuse_labels_out_of_range():
    CLASSIFICATION.graph_checks(tf.constant([0, 4]), 5)  # eager: checked as it is built
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be < 5"):
        CLASSIFICATION.graph_checks(tf.constant([0, 5]), 5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be >= 0"):
        CLASSIFICATION.graph_checks(tf.constant([-1, 0]), 5)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_generated_targets_pass_the_kinds_checks(kind):
    ways = kind.ways or 3
    targets = kind.generated_targets(np.random.default_rng(0), ways, shots=2)
    assert targets.shape == (ways * 2, *kind.target_shape)
    assert targets.dtype == kind.target_dtype.as_numpy_dtype
    assert not kind.outside(targets, ways).any()


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_signatures_follow_the_kind(kind):
    specs = sig.signature_specs((3,), kind)
    adapt_and_predict = specs[sig.ADAPT_AND_PREDICT]
    targets = adapt_and_predict.input(kind.keys.targets)
    assert targets.dtype == kind.target_dtype and targets.shape == (None, *kind.target_shape)
    assert adapt_and_predict.outputs == specs[sig.SERVING_DEFAULT].outputs == kind.outputs
    keys = {i.key for i in adapt_and_predict.inputs}
    assert (sig.TRANSDUCTIVE in keys) == kind.transductive_option
    assert by_inputs(keys) is kind
    assert by_inputs({i.key for i in specs[sig.SERVING_DEFAULT].inputs}) is kind


def test_kinds_by_name_and_metric():
    assert by_name("regression") is REGRESSION and by_metric("accuracy") is CLASSIFICATION
    assert by_inputs({"something_else"}) is None
    with pytest.raises(ValueError, match="Received: metric='auc'"):
        by_metric("auc")
    with pytest.raises(ValueError, match="Received: name='ranking'"):
        by_name("ranking")
    assert CLASSIFICATION.queries_per_class(100) == 1 and REGRESSION.queries_per_class(100) == 100
