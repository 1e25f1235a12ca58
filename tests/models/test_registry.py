import pytest

from keras_reptile.models import MODELS, build_model


@pytest.mark.parametrize(
    "name, outputs, shape, params",
    [
        # 4 conv (3*3*in*64 + 64) + 4 BN (4*64, half trainable) + dense (256*5 + 5)
        ("omniglot_cnn", 5, (28, 28, 1), 640 + 3 * 36928 + 4 * 256 + 1285),
        # 84 -> 42 -> 21 -> 11 -> 6 after the pools: dense (6*6*32*5 + 5)
        ("miniimagenet_cnn", 5, (84, 84, 3), 896 + 3 * 9248 + 4 * 128 + 1152 * 5 + 5),
        ("sine_mlp", 1, (1,), 128 + 4160 + 65),
    ],
)
def test_builds_the_papers_networks(name, outputs, shape, params):
    model = build_model(name, outputs, shape)
    assert model.output_shape == (None, outputs)
    assert model.count_params() == params


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ValueError, match="one of .*omniglot_cnn.*Received: model='resnet'"):
        build_model("resnet", 5, (28, 28, 1))
    assert set(MODELS) == {"omniglot_cnn", "miniimagenet_cnn", "sine_mlp"}


def test_a_model_for_other_inputs_is_refused_with_the_ones_that_fit():
    with pytest.raises(ValueError, match=r"\['sine_mlp'\].*input_shape=\(1,\)"):
        build_model("omniglot_cnn", 1, (1,))
    with pytest.raises(ValueError, match=r"\['miniimagenet_cnn', 'omniglot_cnn'\]"):
        build_model("sine_mlp", 5, (12, 12, 1))
