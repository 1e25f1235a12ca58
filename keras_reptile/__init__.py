"""keras-reptile: Reptile and first-order MAML in TensorFlow 2 / Keras 3."""

__version__ = "0.4.0"
