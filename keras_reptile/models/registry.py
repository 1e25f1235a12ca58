"""Model names -> builders."""

from __future__ import annotations

from collections.abc import Callable

import keras

from keras_reptile.models.miniimagenet_cnn import miniimagenet_cnn
from keras_reptile.models.omniglot_cnn import omniglot_cnn
from keras_reptile.models.sine_mlp import sine_mlp

MODELS: dict[str, Callable[..., keras.Model]] = {
    "omniglot_cnn": omniglot_cnn,
    "miniimagenet_cnn": miniimagenet_cnn,
    "sine_mlp": sine_mlp,
}


def build_model(name: str, num_outputs: int, input_shape: tuple[int, ...]) -> keras.Model:
    """Builds the registered model `name` with `num_outputs` outputs for inputs of `input_shape`."""
    if name not in MODELS:
        raise ValueError(
            f"Unknown model. Expected one of {sorted(MODELS)}. Received: model={name!r}"
        )
    return MODELS[name](num_outputs, tuple(input_shape))
