import math

import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.algorithms import AdamState, InnerOptimizer


def test_sgd_step_by_hand():
    weights, _ = InnerOptimizer("sgd").apply(
        [tf.constant([2.0, -1.0])], [tf.constant([0.5, -2.0])], (), 0.1
    )
    np.testing.assert_allclose(weights[0], [2.0 - 0.05, -1.0 + 0.2], rtol=1e-6)


def test_first_adam_step_moves_by_the_learning_rate():
    # t=1: lr_t = 0.1*sqrt(1-0.999) = 0.00316228; v = 0.001*0.25 = 0.00025; sqrt(v) = 0.0158114
    # w = 0.5 - 0.00316228 * (-0.5) / 0.0158114 = 0.6 (up to epsilon).
    opt = InnerOptimizer("adam")
    state = opt.init_state([tf.constant(0.5)])
    (w,), state = opt.apply([tf.constant(0.5)], [tf.constant(-0.5)], state, 0.1)
    assert float(w) == pytest.approx(0.6, abs=1e-6)
    assert float(state.step) == 1.0
    assert float(state.v[0]) == pytest.approx(0.00025, rel=1e-6)


def test_adam_with_carried_statistics_by_hand():
    # Carried state: 1000 earlier steps, v = 0.01. Then t = 1001:
    # lr_t = 0.1 * sqrt(1 - 0.999**1001) = 0.1 * sqrt(1 - 0.367329) = 0.0795406
    # v = 0.999 * 0.01 + 0.001 * 0.25 = 0.01024; sqrt(v) = 0.1011929
    # w = 0.5 + 0.0795406 * 0.5 / 0.1011929 = 0.5 + 0.3930152 = 0.8930152
    opt = InnerOptimizer("adam")
    state = AdamState(tf.constant(1000.0), (tf.constant(0.01),))
    (w,), state = opt.apply([tf.constant(0.5)], [tf.constant(-0.5)], state, 0.1)
    assert float(state.v[0]) == pytest.approx(0.01024, rel=1e-6)
    assert float(w) == pytest.approx(0.8930152, rel=1e-5)
    assert math.isclose(float(state.step), 1001.0)


def test_unknown_optimizer_raises():
    with pytest.raises(ValueError, match="Received: kind='rmsprop'"):
        InnerOptimizer("rmsprop")
