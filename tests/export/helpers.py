"""What the SavedModel and serving tests share: tiny modules and cards, the op check."""

from __future__ import annotations

import functools
import os

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from keras_reptile.config import Protocol, Recipe
from keras_reptile.export.model_card import Measurement, ModelCard
from keras_reptile.export.saved_model import ServingModule
from keras_reptile.run import build_stacked_model
from keras_reptile.training.trainer import inner_optimizer

# Ops TensorFlow Serving's C++ server cannot run.
PYTHON_OPS = {"PyFunc", "EagerPyFunc", "PyFuncStateless"}

OMNI_RECIPE = Recipe(
    dataset="omniglot", model="omniglot_cnn", classes=5, train_shots=10, sgd=False,
    learning_rate=0.001,
)  # fmt: skip
SINE_RECIPE = Recipe()
MINI_RECIPE = Recipe(
    dataset="miniimagenet", model="miniimagenet_cnn", classes=5, train_shots=15, sgd=False,
    learning_rate=0.001,
)  # fmt: skip
SHAPES = {"omniglot": (28, 28, 1), "sine": (1,), "miniimagenet": (84, 84, 3)}
# The shared export's protocol (conftest.py's `exported`).
WAYS, SHOTS, STEPS, LR, BATCH = 5, 2, 6, 0.01, 5
PROTOCOL = Protocol(shots=SHOTS, eval_iters=STEPS, eval_batch=BATCH, learning_rate=LR)
RESULT = Measurement("test", PROTOCOL, "accuracy", 0.5, 0.1, 10, 0)


def meta_graph(path):
    """The first MetaGraphDef of the SavedModel at `path` (its `saved_model.pb`, parsed)."""
    with open(os.path.join(str(path), "saved_model.pb"), "rb") as f:
        return saved_model_pb2.SavedModel.FromString(f.read()).meta_graphs[0]


def saved_model_ops(path) -> set[str]:
    """Every op type in a SavedModel's graph and its function library."""
    graph = meta_graph(path).graph_def
    ops = {n.op for n in graph.node}
    for fn in graph.library.function:
        ops |= {n.op for n in fn.node_def}
    return ops


def make_module(
    recipe: Recipe,
    protocol: Protocol,
    *,
    seed: int = 1,
    adam_step: float = 10.0,
    random_adam_v: bool = False,
) -> ServingModule:
    """A module of `recipe`'s untrained model (initial weights from `seed`) and an Adam state:
    `adam_step`, and v 1e-4 everywhere (or uniform in [1e-6, 1e-3] with `random_adam_v`)."""
    model = build_stacked_model(recipe.replace(seed=seed), SHAPES[recipe.dataset])
    weights = [w.numpy() for w in model.initial_weights()]
    rng = np.random.default_rng(0)
    adam_v = [
        rng.uniform(1e-6, 1e-3, w.shape).astype(np.float32)
        if random_adam_v
        else np.full(w.shape, 1e-4, np.float32)
        for w in weights
    ]
    return ServingModule(
        model,
        weights,
        inner_optimizer(recipe),
        adam_step,
        adam_v,
        protocol=protocol,
        ways=recipe.classes,
    )


def make_card(name: str, module: ServingModule, recipe: Recipe, results=()) -> ModelCard:
    return ModelCard(
        name=name,
        recipe=recipe,
        default_protocol=module.protocol,
        input_shape=SHAPES[recipe.dataset],
        meta_iterations=0,
        results=tuple(results),
    )


class LoadedWithDefaults:
    """`tf.saved_model.load(path)` whose signatures fill left-out optional inputs with the
    SignatureDef's defaults, as TensorFlow Serving does (Python's loaded functions do not)."""

    def __init__(self, path):
        self._loaded = tf.saved_model.load(str(path))
        graph = meta_graph(path)
        self.signatures = {}
        for name, fn in self._loaded.signatures.items():
            defaults = {
                k: tf.constant(tf.make_ndarray(v))
                for k, v in graph.signature_def[name].defaults.items()
            }
            self.signatures[name] = functools.partial(_call, fn, defaults)

    def __getattr__(self, name):
        return getattr(self._loaded, name)


def _call(fn, defaults, **inputs):
    return fn(**{**defaults, **inputs})


def task(seed=0):
    """A 5-way task of random images: support, labels, queries."""
    rng = np.random.default_rng(seed)
    support = rng.random((WAYS * SHOTS, 28, 28, 1), dtype=np.float32)
    labels = np.repeat(np.arange(WAYS, dtype=np.int32), SHOTS)
    query = rng.random((WAYS, 28, 28, 1), dtype=np.float32)
    return support, labels, query
