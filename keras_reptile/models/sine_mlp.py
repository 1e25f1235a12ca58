"""The MLP of the Reptile paper's sine-regression figure."""

from __future__ import annotations

import keras


def sine_mlp(num_outputs: int = 1, input_shape: tuple[int, ...] = (1,)) -> keras.Model:
    """1 -> 64 -> 64 -> 1 with tanh activations.

    Args:
        num_outputs: int. Regression outputs (1 for sine).
        input_shape: tuple. Shape of one input.

    Example:
    >>> sine_mlp().output_shape
    (None, 1)
    """
    inputs = keras.Input(input_shape, name="inputs")
    x = keras.layers.Dense(64, activation="tanh", name="hidden0")(inputs)
    x = keras.layers.Dense(64, activation="tanh", name="hidden1")(x)
    outputs = keras.layers.Dense(num_outputs, name="outputs")(x)
    return keras.Model(inputs, outputs, name="sine_mlp")
