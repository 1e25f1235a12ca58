"""What one example costs a model: floating-point work and activation memory of a forward pass."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np


@dataclasses.dataclass(frozen=True)
class ModelCost:
    """Per-example costs of a model's forward pass.

    Args:
        forward_flops: int. Multiply-adds x 2 of the convolution and dense layers.
        activation_floats: int. Output elements of every layer, summed (what a backward pass
            keeps of a forward one, BatchNorm's normalised values aside).
        weight_floats: int. Trainable values.
    """

    forward_flops: int
    activation_floats: int
    weight_floats: int

    @classmethod
    def of(cls, model: keras.Model) -> ModelCost:
        flops = activations = 0
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            out = layer.output.shape[1:]
            activations += int(np.prod(out))
            if isinstance(layer, keras.layers.Conv2D):
                kh, kw, c_in, c_out = layer.kernel.shape
                flops += 2 * int(np.prod(out[:-1])) * kh * kw * c_in * c_out
            elif isinstance(layer, keras.layers.Dense):
                flops += 2 * int(np.prod(layer.kernel.shape)) * int(np.prod(out[:-1]) or 1)
        weights = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        return cls(flops, activations, weights)

    def training_flops(self, examples: int) -> int:
        """Forward and backward work on `examples` (the backward pass about twice the forward)."""
        return 3 * self.forward_flops * examples
