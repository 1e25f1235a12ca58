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


# Each model's input rank: images (height, width, channels) or sine's x.
INPUT_RANKS = {"omniglot_cnn": 3, "miniimagenet_cnn": 3, "sine_mlp": 1}


def build_model(name: str, num_outputs: int, input_shape: tuple[int, ...]) -> keras.Model:
    """Builds the registered model `name` with `num_outputs` outputs for inputs of `input_shape`."""
    if name not in MODELS:
        raise ValueError(
            f"Unknown model. Expected one of {sorted(MODELS)}. Received: model={name!r}"
        )
    if len(input_shape) != INPUT_RANKS[name]:
        fitting = sorted(m for m, rank in INPUT_RANKS.items() if rank == len(input_shape))
        raise ValueError(
            f"`{name}` takes inputs of rank {INPUT_RANKS[name]}; inputs of this shape take "
            f"{fitting}. Received: model={name!r}, input_shape={tuple(input_shape)}"
        )
    return MODELS[name](num_outputs, tuple(input_shape))
