"""The paper's Mini-ImageNet network."""

from __future__ import annotations

import keras


def miniimagenet_cnn(
    num_classes: int, image_shape: tuple[int, int, int] = (84, 84, 3)
) -> keras.Model:
    """4 x [Conv2D 32 3x3 'same', BatchNorm, MaxPool 2, ReLU], flatten, Dense(num_classes).

    Args:
        num_classes: int. Ways of the task (logits out).
        image_shape: tuple. `(height, width, channels)` of the inputs.

    Example:
    >>> miniimagenet_cnn(5).output_shape
    (None, 5)
    """
    inputs = keras.Input(image_shape, name="images")
    x = inputs
    for i in range(4):
        x = keras.layers.Conv2D(32, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"pool{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="miniimagenet_cnn")
