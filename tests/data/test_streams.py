import numpy as np

from keras_reptile.config import Recipe
from keras_reptile.data.streams import (
    Stream,
    initialization_seed,
    meta_train_key,
    stream_key,
)
from keras_reptile.run import build_stacked_model


def test_replicate_zero_is_the_seeds_run():
    assert meta_train_key(3) == meta_train_key(3, 0) == stream_key(3, Stream.META_TRAIN)
    assert initialization_seed(3, 0) == 3


def test_replicates_draw_their_own_training_but_share_the_evaluation():
    keys = {meta_train_key(0, r) for r in range(4)}
    seeds = {initialization_seed(0, r) for r in range(4)}
    assert len(keys) == len(seeds) == 4
    assert all(0 <= s < 2**31 for s in seeds)
    one, two = (build_stacked_model(Recipe(replicate=r), (1,)).initial_weights() for r in (0, 1))
    assert max(np.abs(a.numpy() - b.numpy()).max() for a, b in zip(one, two)) > 1e-2
    again = build_stacked_model(Recipe(replicate=1), (1,)).initial_weights()
    for a, b in zip(two, again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
