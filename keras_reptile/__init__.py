"""keras-reptile: Reptile and first-order MAML in TensorFlow 2 / Keras 3."""

from __future__ import annotations

import importlib

__version__ = "0.4.0"

# Public names, imported on first use so that `import keras_reptile` stays light (no TensorFlow).
_LAZY = {
    "FewShotModel": "keras_reptile.few_shot",
    "Reptile": "keras_reptile.meta_learner",
    "FOMAML": "keras_reptile.meta_learner",
    "MetaLearner": "keras_reptile.meta_learner",
    "Recipe": "keras_reptile.config",
    "Protocol": "keras_reptile.config",
    "get_preset": "keras_reptile.presets",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'keras_reptile' has no attribute {name!r}")
