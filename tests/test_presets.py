"""The presets are the paper's commands (DESIGN section 4)."""

import pytest

from keras_reptile.presets import PRESETS, get_preset

# preset: ways, shots, train_shots, inner_batch, inner_iters, lr, meta_iters, eval_batch
PAPER = {
    "omniglot_5w1s": (5, 1, 10, 10, 5, 0.001, 100000, 5),
    "omniglot_5w5s": (5, 5, 10, 10, 5, 0.001, 100000, 5),
    "omniglot_20w1s": (20, 1, 10, 20, 10, 0.0005, 200000, 10),
    "omniglot_20w5s": (20, 5, 10, 20, 10, 0.0005, 200000, 10),
    "miniimagenet_5w1s": (5, 1, 15, 10, 8, 0.001, 100000, 5),
    "miniimagenet_5w5s": (5, 5, 15, 10, 8, 0.001, 100000, 15),
}
FIELDS = (
    "classes",
    "shots",
    "train_shots",
    "inner_batch",
    "inner_iters",
    "learning_rate",
    "meta_iters",
    "eval_batch",
)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_presets(name):
    config = get_preset(name).validate()
    assert tuple(getattr(config, f) for f in FIELDS) == PAPER[name]
    assert (config.meta_step, config.meta_step_final, config.meta_batch) == (1.0, 0.0, 5)
    assert (config.eval_iters, config.eval_samples, config.sgd) == (50, 10000, False)
    assert config.dataset == name.split("_")[0]


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="omniglot_5w1s.*Received: preset='x'"):
        get_preset("x")
    assert set(PRESETS) == set(PAPER) | {"sine"}
