"""The zoo in Python: load a meta-initialized SavedModel, adapt it to a support set, predict.

    model = keras_reptile.FewShotModel.from_preset("omniglot_5w")
    adapted = model.adapt(support_pngs, support_labels)      # inner_steps=..., transductive=...
    adapted.predict(query_pngs)["classes"]

It calls the SavedModel's own signatures, the ones the server and `tensorflow_model_server` run,
with the inputs prepared as `serving.client` prepares them: the same task gets the same answer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_reptile.data.preprocessing import load_image
from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import ModelCard
from keras_reptile.export.saved_model import version_dir
from keras_reptile.task_kind import TaskKind

ZOO_ENV = "KERAS_REPTILE_ZOO"
# The zoo of a source checkout: `saved_models/` beside the package.
_CHECKOUT_ZOO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "saved_models")  # fmt: skip


def zoo_dirs() -> list[str]:
    """Where `from_preset` looks for a zoo name: `$KERAS_REPTILE_ZOO` (folders separated by
    `os.pathsep`), `./saved_models`, then the checkout's `saved_models/`."""
    dirs = [d for d in os.environ.get(ZOO_ENV, "").split(os.pathsep) if d]
    return dirs + ["saved_models", _CHECKOUT_ZOO]


def resolve(preset: str, version: int | None = None) -> str:
    """The version folder of `preset`: a zoo name, a model's base folder or a version folder."""
    if not isinstance(preset, str | os.PathLike) or not str(preset):
        raise ValueError(f"`preset` must be a zoo name or a folder. Received: preset={preset!r}")
    preset = str(preset)
    candidates = [preset] if os.path.isdir(preset) else []
    if os.sep not in preset and "/" not in preset:
        candidates += [os.path.join(d, preset) for d in zoo_dirs()]
    for base in candidates:
        if not os.path.isdir(base):
            continue
        path = os.path.join(base, str(version)) if version is not None else version_dir(base)
        if os.path.exists(os.path.join(path, "saved_model.pb")):
            return os.path.abspath(path)
        if version is not None:
            raise ValueError(f"{base} has no version {version}. Received: version={version}")
    names = sorted(
        {n for d in zoo_dirs() if os.path.isdir(d) for n in os.listdir(d)
         if os.path.isdir(os.path.join(d, n))}
    )  # fmt: skip
    raise ValueError(
        "Not a SavedModel version folder, a model's base folder or a zoo name "
        f"(zoo: {', '.join(names) or 'none found'}; set ${ZOO_ENV} to add folders). "
        f"Received: preset={preset!r}"
    )


def _examples(values, input_shape: tuple[int, ...], what: str) -> np.ndarray:
    """`values` as float32 `[N, *input_shape]`: an array, or a sequence of arrays, image file
    paths or PIL images (prepared as `serving.client` prepares image files)."""
    if isinstance(values, np.ndarray | tf.Tensor):
        array = np.asarray(values, np.float32)
    else:
        if isinstance(values, str | os.PathLike | Image.Image):
            values = [values]
        items = []
        for value in values:
            if isinstance(value, str | os.PathLike | Image.Image):
                items.append(load_image(value, input_shape))
            else:
                items.append(np.asarray(value, np.float32))
        array = np.stack(items) if items else np.zeros((0, *input_shape), np.float32)
    if array.shape[1:] != tuple(input_shape):
        raise ValueError(
            f"{what} must be examples of shape {tuple(input_shape)} (or image files / PIL images "
            f"for image models). Received: {what}.shape={array.shape}"
        )
    return array


class FewShotModel:
    """A meta-initialized SavedModel of this package, adapted to few-shot tasks in-process.

    Args:
        path: str. A SavedModel version folder (see `from_preset` for names and base folders).
    """

    def __init__(self, path: str):
        self.path = path
        self.card = ModelCard.read(path)
        self._loaded = tf.saved_model.load(path)
        self._signatures = self._loaded.signatures

    @classmethod
    def from_preset(cls, preset: str, version: int | None = None) -> FewShotModel:
        """Loads a zoo model by name ("omniglot_5w"), a model's base folder (its latest
        version) or a version folder."""
        return cls(resolve(preset, version))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.card.input_shape)

    @property
    def task_kind(self) -> TaskKind:
        return self.card.task_kind

    def _protocol_inputs(self, inner_steps, inner_batch_size, learning_rate, transductive):
        """The signatures' optional inputs, defaulted from the card's protocol and checked by
        the same rules as a recipe's protocol."""
        d = self.card.default_protocol
        protocol = d.replace(
            eval_iters=d.eval_iters if inner_steps is None else inner_steps,
            eval_batch=d.eval_batch if inner_batch_size is None else inner_batch_size,
            learning_rate=d.learning_rate if learning_rate is None else learning_rate,
            transductive=d.transductive if transductive is None else bool(transductive),
        ).validate(self.card.recipe)
        inputs = {
            sig.INNER_STEPS: tf.constant(protocol.eval_iters, tf.int32),
            sig.INNER_BATCH_SIZE: tf.constant(protocol.eval_batch, tf.int32),
            sig.LEARNING_RATE: tf.constant(protocol.learning_rate, tf.float32),
        }
        if self.task_kind.transductive_option:
            inputs[sig.TRANSDUCTIVE] = tf.constant(protocol.transductive)
        return inputs

    def _support(self, support_x, support_y) -> dict[str, tf.Tensor]:
        x = _examples(support_x, self.input_shape, "support_x")
        y = self.task_kind.targets(support_y, self.card.ways)
        if len(x) != len(y) or not len(x):
            raise ValueError(
                "support_x and support_y must hold the same number (at least one) of examples. "
                f"Received: {len(x)} and {len(y)}"
            )
        keys = self.task_kind.keys
        return {keys.support: tf.constant(x), keys.targets: tf.constant(y)}

    def _query(self, query_x) -> tf.Tensor:
        return tf.constant(_examples(query_x, self.input_shape, "query_x"))

    def adapt_and_predict(
        self,
        support_x,
        support_y,
        query_x,
        *,
        inner_steps: int | None = None,
        inner_batch_size: int | None = None,
        learning_rate: float | None = None,
        transductive: bool | None = None,
    ) -> dict[str, np.ndarray]:
        """Adapts to the support set and answers the queries: `logits`, `probabilities`,
        `classes` (classification) or `predictions` (regression). Unset settings are the card's
        default protocol."""
        inputs = {
            **self._support(support_x, support_y),
            self.task_kind.keys.query: self._query(query_x),
            **self._protocol_inputs(inner_steps, inner_batch_size, learning_rate, transductive),
        }
        return _numpy(self._signatures[sig.ADAPT_AND_PREDICT](**inputs))

    def adapt(
        self,
        support_x,
        support_y,
        *,
        inner_steps: int | None = None,
        inner_batch_size: int | None = None,
        learning_rate: float | None = None,
        transductive: bool | None = None,
    ) -> AdaptedModel:
        """The model adapted to a support set once; its `predict` answers any number of query
        batches without adapting again (on SavedModels with the `adapt` signatures)."""
        support = self._support(support_x, support_y)
        settings = self._protocol_inputs(inner_steps, inner_batch_size, learning_rate, transductive)
        weights = None
        if sig.ADAPT in self._signatures:
            adapt_inputs = {**support, **{k: v for k, v in settings.items()
                                          if k != sig.TRANSDUCTIVE}}  # fmt: skip
            weights = self._signatures[sig.ADAPT](**adapt_inputs)[sig.ADAPTED_WEIGHTS]
        return AdaptedModel(self, support, settings, weights)

    def predict(self, x) -> dict[str, np.ndarray]:
        """The initialization's own outputs, unadapted (`serving_default`)."""
        key = self.task_kind.example_key
        return _numpy(self._signatures[sig.SERVING_DEFAULT](**{key: self._query(x)}))


class AdaptedModel:
    """A `FewShotModel` adapted to one support set (from `FewShotModel.adapt`)."""

    def __init__(self, base: FewShotModel, support, settings, weights):
        self.base, self._support, self._settings, self.weights = base, support, settings, weights

    def predict(self, query_x) -> dict[str, np.ndarray]:
        """The adapted model's answers for the queries, as `adapt_and_predict` gives them."""
        base = self.base
        keys = base.task_kind.keys
        query_key = keys.query
        query = base._query(query_x)
        if self.weights is None:  # an export without the adapt signatures: adapt again
            inputs = {**self._support, query_key: query, **self._settings}
            return _numpy(base._signatures[sig.ADAPT_AND_PREDICT](**inputs))
        inputs = {query_key: query, sig.ADAPTED_WEIGHTS: self.weights}
        if base.task_kind.transductive_option:
            # The non-transductive answer normalises each query with the support set's batch.
            inputs[keys.support] = self._support[keys.support]
            inputs[sig.TRANSDUCTIVE] = self._settings[sig.TRANSDUCTIVE]
        return _numpy(base._signatures[sig.PREDICT_ADAPTED](**inputs))


def _numpy(outputs: Mapping[str, tf.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in outputs.items()}


__all__: Sequence[str] = ("AdaptedModel", "FewShotModel", "resolve", "zoo_dirs")
