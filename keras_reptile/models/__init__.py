"""The paper's networks and a name -> builder registry."""

from keras_reptile.models.registry import MODELS, build_model

__all__ = ["MODELS", "build_model"]
