"""Writes meta-initialized SavedModels in TensorFlow Serving's versioned layout."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from keras_reptile import __version__
from keras_reptile.algorithms import (
    AdamState,
    FunctionalModel,
    InnerOptimizer,
    adapt,
    predict_queries,
)
from keras_reptile.export import signatures as sig


class ServingModule(tf.Module):
    """Tracks the raw weight and Adam variables and defines the two serving signatures.

    Only plain `tf.Variable`s are tracked (never the Keras model, whose SavedModel copies of its
    variables break TF1-Session loading), and nothing ever writes them: adaptation runs on
    tensors inside a `tf.while_loop`, so concurrent requests cannot disturb each other.

    Args:
        fmodel: FunctionalModel. The architecture.
        weights: list of arrays. The meta-initialization.
        optimizer: InnerOptimizer. The inner optimizer used at evaluation.
        adam_step, adam_v: the carried Adam statistics (ignored for SGD).
        ways: int. Classes per task (1 for regression).
        inner_steps, learning_rate, batch_size: the preset's evaluation settings (the defaults).
    """

    def __init__(
        self,
        fmodel: FunctionalModel,
        weights,
        optimizer: InnerOptimizer,
        adam_step,
        adam_v,
        *,
        ways: int,
        inner_steps: int,
        learning_rate: float,
        batch_size: int,
    ):
        super().__init__(name="reptile_serving")
        self.weights = [
            tf.Variable(w, trainable=False, name=f"weight_{i}") for i, w in enumerate(weights)
        ]
        self.adam_step = tf.Variable(float(adam_step), trainable=False, name="adam_step")
        self.adam_v = [
            tf.Variable(v, trainable=False, name=f"adam_v_{i}") for i, v in enumerate(adam_v)
        ]
        # Plain attributes: not tracked, so the Keras model is not part of the SavedModel.
        self.__dict__["_fmodel"] = fmodel
        self.__dict__["_optimizer"] = optimizer
        self.ways, self.batch_size = ways, batch_size
        self.specs = sig.signature_specs(fmodel.input_shape, fmodel.regression)
        self._default_steps = tf.constant(inner_steps, tf.int32)
        self._default_lr = tf.constant(learning_rate, tf.float32)
        self.__dict__["serving_signatures"] = self._build_signatures()

    def _state(self):
        if self._optimizer.kind == "sgd":
            return ()
        return AdamState(self.adam_step.read_value(), tuple(v.read_value() for v in self.adam_v))

    def _adapt(self, support_x, support_y, inner_steps, learning_rate):
        checks = [
            tf.debugging.assert_greater(
                tf.shape(support_x)[0], 0, message="the support set is empty"
            ),
            tf.debugging.assert_equal(
                tf.shape(support_x)[0],
                tf.shape(support_y)[0],
                message="support inputs and their labels/targets differ in count",
            ),
            tf.debugging.assert_non_negative(inner_steps, message="inner_steps must be >= 0"),
            tf.debugging.assert_all_finite(learning_rate, message="learning_rate must be finite"),
        ]
        with tf.control_dependencies(checks):
            weights = [tf.identity(w.read_value()) for w in self.weights]
        return adapt(
            self._fmodel,
            self._optimizer,
            weights,
            self._state(),
            support_x,
            support_y,
            learning_rate,
            inner_steps,
            self.batch_size,
            tf.constant(sig.SERVING_BATCH_SEED, tf.int64),
        )

    def _build_signatures(self) -> dict:
        specs = {name: [i.tensor_spec() for i in s.inputs] for name, s in self.specs.items()}
        fmodel = self._fmodel
        steps, lr = self._default_steps, self._default_lr
        if fmodel.regression:

            @tf.function(input_signature=specs[sig.SERVING_DEFAULT])
            def serving_default(inputs):
                return {sig.PREDICTIONS: fmodel([w.read_value() for w in self.weights], inputs)}

            @tf.function(input_signature=specs[sig.ADAPT_AND_PREDICT])
            def adapt_and_predict(
                support_inputs, support_targets, query_inputs, inner_steps=steps, learning_rate=lr
            ):
                adapted = self._adapt(support_inputs, support_targets, inner_steps, learning_rate)
                return {sig.PREDICTIONS: fmodel(adapted, query_inputs)}

        else:
            ways = self.ways

            def outputs(logits):
                return {
                    sig.LOGITS: logits,
                    sig.PROBABILITIES: tf.nn.softmax(logits),
                    sig.CLASSES: tf.argmax(logits, axis=-1),
                }

            @tf.function(input_signature=specs[sig.SERVING_DEFAULT])
            def serving_default(images):
                return outputs(fmodel([w.read_value() for w in self.weights], images))

            @tf.function(input_signature=specs[sig.ADAPT_AND_PREDICT])
            def adapt_and_predict(
                support_images,
                support_labels,
                query_images,
                inner_steps=steps,
                learning_rate=lr,
                transductive=tf.constant(False),  # noqa: B008 (a tensor default is a signature default)
            ):
                label_checks = [
                    tf.debugging.assert_non_negative(support_labels, message="labels must be >= 0"),
                    tf.debugging.assert_less(
                        support_labels, ways, message=f"labels must be < {ways}"
                    ),
                ]
                with tf.control_dependencies(label_checks):
                    support_labels = tf.identity(support_labels)
                adapted = self._adapt(support_images, support_labels, inner_steps, learning_rate)
                logits = tf.cond(
                    transductive,
                    lambda: predict_queries(fmodel, adapted, support_images, query_images, True),
                    lambda: predict_queries(fmodel, adapted, support_images, query_images, False),
                )
                return outputs(logits)

        return {sig.SERVING_DEFAULT: serving_default, sig.ADAPT_AND_PREDICT: adapt_and_predict}


def _versions(base_dir: str) -> list[int]:
    """The integer version folders in `base_dir` (none if it is not a folder)."""
    if not os.path.isdir(base_dir):
        return []
    return [int(n) for n in os.listdir(base_dir) if n.isdigit()]


def next_version(base_dir: str) -> int:
    """One more than the largest integer version folder in `base_dir` (1 if none)."""
    return max(_versions(base_dir), default=0) + 1


def _warmup_records(module: ServingModule, model_name: str) -> list[bytes]:
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    shape = module._fmodel.input_shape
    rng = np.random.default_rng(0)
    records = []
    for name, spec in module.specs.items():
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=name)
        )
        for inp in spec.inputs:
            if inp.optional:
                continue
            if inp.dtype == tf.int32:
                value = np.arange(module.ways, dtype=np.int32)
            elif inp.shape == (None, 1) and len(shape) != 1:
                value = rng.normal(size=(module.ways, 1)).astype(np.float32)
            else:
                value = rng.random((module.ways, *shape), dtype=np.float32)
            request.inputs[inp.key].CopyFrom(tf.make_tensor_proto(value))
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        records.append(log.SerializeToString())
    return records


def export_saved_model(module: ServingModule, base_dir: str, card: dict, model_name: str) -> str:
    """Writes `module` to `base_dir/<next version>/` atomically and returns that path.

    The export is written beside the versions under a hidden name, checked by reloading it, and
    only then renamed into place, so a half-written or broken export never appears as a version.
    """
    os.makedirs(base_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=base_dir)
    try:
        tf.saved_model.save(module, tmp, signatures=module.serving_signatures)
        extra = os.path.join(tmp, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, sig.CARD_FILE), "w") as f:
            json.dump({**card, "package_version": __version__}, f, indent=2)
        with tf.io.TFRecordWriter(os.path.join(extra, sig.WARMUP_FILE)) as writer:
            for record in _warmup_records(module, model_name):
                writer.write(record)
        loaded = tf.saved_model.load(tmp)
        missing = set(sig.SIGNATURES) - set(loaded.signatures)
        if missing:
            raise RuntimeError(f"Export check failed: signatures {sorted(missing)} are missing.")
        version = next_version(base_dir)
        final = os.path.join(base_dir, str(version))
        os.rename(tmp, final)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass(frozen=True)
class ExportedState:
    """What an export holds of a meta-training run: enough to evaluate, re-export or go on."""

    path: str
    card: dict
    weights: list
    adam_step: float
    adam_v: list

    @property
    def meta_iterations(self) -> int:
        return int(self.card["meta_iterations"])


def read_exported_state(path: str) -> ExportedState:
    """Reads the initialization, Adam statistics and card of `path` (a version, or its base folder).

    A base folder (`saved_models/<name>`) means its largest integer version.
    """
    versions = _versions(path)
    if versions and not os.path.exists(os.path.join(path, "saved_model.pb")):
        path = os.path.join(path, str(max(versions)))
    card_path = os.path.join(path, "assets.extra", sig.CARD_FILE)
    if not (os.path.exists(os.path.join(path, "saved_model.pb")) and os.path.exists(card_path)):
        raise ValueError(
            "Expected a keras-reptile SavedModel version folder (saved_model.pb and "
            f"assets.extra/{sig.CARD_FILE}) or its base folder. Received: path={path!r}"
        )
    with open(card_path) as f:
        card = json.load(f)
    if "meta_iterations" not in card or "config" not in card:
        raise ValueError(
            f"{card_path} lacks meta_iterations or config; it was not written by this package's "
            f"exporter. Received: path={path!r}"
        )
    loaded = tf.saved_model.load(path)
    if not all(hasattr(loaded, a) for a in ("weights", "adam_step", "adam_v")):
        raise ValueError(
            "The SavedModel has no weights, adam_step and adam_v variables; it was not written "
            f"by this package's exporter. Received: path={path!r}"
        )
    return ExportedState(
        path=path,
        card=card,
        weights=[w.numpy() for w in loaded.weights],
        adam_step=float(loaded.adam_step.numpy()),
        adam_v=[v.numpy() for v in loaded.adam_v],
    )
