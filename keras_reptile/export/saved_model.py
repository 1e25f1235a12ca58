"""Writes meta-initialized SavedModels in TensorFlow Serving's versioned layout."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from keras_reptile import __version__
from keras_reptile.algorithms import (
    AdamState,
    InnerOptimizer,
    StackedModel,
    adapt_tasks,
    predict_tasks,
    stack,
    stack_state,
)
from keras_reptile.config import Protocol
from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import ModelCard

# Tasks of one adapt_and_predict_tasks call adapting at the same time.
_PARALLEL_TASKS = 4


class ServingModule(tf.Module):
    """Tracks the raw weight and Adam variables and defines the serving signatures.

    Only plain `tf.Variable`s are tracked (never the Keras model, whose SavedModel copies of its
    variables break TF1-Session loading), and nothing ever writes them: adaptation runs on
    tensors inside a `tf.while_loop`, so concurrent requests cannot disturb each other. Every
    signature runs the stacked implementation; `adapt_and_predict` is a stack of one task.

    Args:
        model: StackedModel. The architecture.
        weights: list of arrays. The meta-initialization.
        optimizer: InnerOptimizer. The inner optimizer used at evaluation.
        adam_step, adam_v: the carried Adam statistics (ignored for SGD).
        protocol: Protocol. What the optional inputs default to.
        ways: int. Classes per task (1 for regression).
    """

    def __init__(
        self,
        model: StackedModel,
        weights,
        optimizer: InnerOptimizer,
        adam_step,
        adam_v,
        *,
        protocol: Protocol,
        ways: int,
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
        self.__dict__["_model"] = model
        self.__dict__["_optimizer"] = optimizer
        self.ways, self.protocol = ways, protocol
        self.specs = sig.signature_specs(model.input_shape, model.regression)
        self.__dict__["serving_signatures"] = self._build_signatures()

    def _initialization(self, num_tasks):
        weights = stack([w.read_value() for w in self.weights], num_tasks)
        if self._optimizer.kind == "sgd":
            return weights, ()
        state = AdamState(self.adam_step.read_value(), tuple(v.read_value() for v in self.adam_v))
        return weights, stack_state(state, num_tasks)

    def _adapt_and_predict(self, support_x, support_y, query_x, steps, batch, lr, transductive):
        """The signature's outputs (`_outputs`, each `[T, Q, ...]`) for `T` tasks `[T, S, ...]`,
        `[T, S]`, `[T, Q, ...]`."""
        shape = tf.shape(support_x)
        checks = [
            tf.debugging.assert_greater(shape[0], 0, message="no task was sent"),
            tf.debugging.assert_greater(shape[1], 0, message="the support set is empty"),
            tf.debugging.assert_equal(
                shape[:2],
                tf.shape(support_y)[:2],
                message="support inputs and their labels/targets differ in count",
            ),
            tf.debugging.assert_equal(
                shape[0], tf.shape(query_x)[0], message="support and query task counts differ"
            ),
            tf.debugging.assert_non_negative(steps, message="inner_steps must be >= 0"),
            tf.debugging.assert_positive(batch, message="inner_batch_size must be >= 1"),
            tf.debugging.assert_all_finite(lr, message="learning_rate must be finite"),
        ]
        if not self._model.regression:
            checks += [
                tf.debugging.assert_non_negative(support_y, message="labels must be >= 0"),
                tf.debugging.assert_less(
                    support_y, self.ways, message=f"labels must be < {self.ways}"
                ),
            ]
        with tf.control_dependencies(checks):
            if support_x.shape[0] == 1:
                return self._outputs(self._adapt_and_predict_one(
                    support_x, support_y, query_x, steps, batch, lr, transductive
                ))  # fmt: skip

            # A task count known only at run time: each task adapts as a stack of one, so its
            # answer is the one it gets alone; the executor runs tasks side by side. Its outputs
            # are derived task by task too: Eigen's softmax rounds an element differently
            # depending on where it falls in the whole tensor (vectorised or scalar exp).
            def task_outputs(task):
                outputs = self._adapt_and_predict_one(
                    task[0][None], task[1][None], task[2][None], steps, batch, lr, transductive
                )
                return {k: v[0] for k, v in self._outputs(outputs).items()}

            return tf.map_fn(
                task_outputs,
                (support_x, support_y, query_x),
                fn_output_signature={
                    k: sig.OUTPUT_DTYPES[k] for k in self.specs[sig.ADAPT_AND_PREDICT_TASKS].outputs
                },
                parallel_iterations=_PARALLEL_TASKS,
            )

    def _adapt_and_predict_one(self, support_x, support_y, query_x, steps, batch, lr, transductive):
        """`_adapt_and_predict` of one task `[1, S, ...]`, `[1, S]`, `[1, Q, ...]`."""
        weights, state = self._initialization(1)
        # Every task draws its mini-batches with the same fixed seed, as it would alone.
        seeds = tf.constant([sig.SERVING_BATCH_SEED], tf.int64)
        model = self._model
        adapted = adapt_tasks(
            model, self._optimizer, weights, state, support_x, support_y, lr, steps, batch, seeds
        )
        if model.regression or not model.uses_batch_statistics:
            return predict_tasks(model, adapted, support_x, query_x, True)
        return tf.cond(
            transductive,
            lambda: predict_tasks(model, adapted, support_x, query_x, True),
            lambda: predict_tasks(model, adapted, support_x, query_x, False),
        )

    def _outputs(self, outputs: tf.Tensor) -> dict:
        if self._model.regression:
            return {sig.PREDICTIONS: outputs}
        return {
            sig.LOGITS: outputs,
            sig.PROBABILITIES: tf.nn.softmax(outputs),
            sig.CLASSES: tf.argmax(outputs, axis=-1, output_type=sig.OUTPUT_DTYPES[sig.CLASSES]),
        }

    def _build_signatures(self) -> dict:
        specs = {name: [i.tensor_spec() for i in s.inputs] for name, s in self.specs.items()}
        p = self.protocol
        steps = tf.constant(p.eval_iters, tf.int32)
        batch = tf.constant(p.eval_batch, tf.int32)
        lr = tf.constant(p.learning_rate, tf.float32)
        transductive = tf.constant(p.transductive)

        def one_task(outputs):
            return {k: v[0] for k, v in outputs.items()}

        def run(support_x, support_y, query_x, steps, batch, lr, transductive, tasks):
            if not tasks:
                support_x, support_y, query_x = support_x[None], support_y[None], query_x[None]
            outputs = self._adapt_and_predict(
                support_x, support_y, query_x, steps, batch, lr, transductive
            )
            return outputs if tasks else one_task(outputs)

        def default(x):
            weights, _ = self._initialization(1)
            return one_task(self._outputs(self._model(weights, x[None])))

        # Argument names are the inputs' keys; a tensor default makes the input optional (a
        # PlaceholderWithDefault in the graph, a default in the SignatureDef).
        if self._model.regression:

            @tf.function(input_signature=specs[sig.SERVING_DEFAULT])
            def serving_default(inputs):
                return default(inputs)

            def adapt(tasks):
                def fn(
                    support_inputs,
                    support_targets,
                    query_inputs,
                    inner_steps=steps,
                    inner_batch_size=batch,
                    learning_rate=lr,
                ):
                    return run(
                        support_inputs, support_targets, query_inputs, inner_steps,
                        inner_batch_size, learning_rate, False, tasks,
                    )  # fmt: skip

                return fn

        else:

            @tf.function(input_signature=specs[sig.SERVING_DEFAULT])
            def serving_default(images):
                return default(images)

            def adapt(tasks):
                def fn(
                    support_images,
                    support_labels,
                    query_images,
                    inner_steps=steps,
                    inner_batch_size=batch,
                    learning_rate=lr,
                    transductive=transductive,
                ):
                    return run(
                        support_images, support_labels, query_images, inner_steps,
                        inner_batch_size, learning_rate, transductive, tasks,
                    )  # fmt: skip

                return fn

        adapt_and_predict = tf.function(adapt(False), input_signature=specs[sig.ADAPT_AND_PREDICT])
        adapt_and_predict_tasks = tf.function(
            adapt(True), input_signature=specs[sig.ADAPT_AND_PREDICT_TASKS]
        )
        return {
            sig.SERVING_DEFAULT: serving_default,
            sig.ADAPT_AND_PREDICT: adapt_and_predict,
            sig.ADAPT_AND_PREDICT_TASKS: adapt_and_predict_tasks,
        }


def _versions(base_dir: str) -> list[int]:
    """The integer version folders in `base_dir` (none if it is not a folder)."""
    if not os.path.isdir(base_dir):
        return []
    return [int(n) for n in os.listdir(base_dir) if n.isdigit()]


def next_version(base_dir: str) -> int:
    """One more than the largest integer version folder in `base_dir` (1 if none)."""
    return max(_versions(base_dir), default=0) + 1


def warmup_arrays(spec: sig.SignatureSpec, input_shape, ways: int, seed: int = 0) -> dict:
    """A valid request's required inputs for `spec`: one example per class (two tasks of them
    for the multi-task signature)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for inp in spec.inputs:
        if inp.optional:
            continue
        lead = (2,) if inp.tasks else ()
        if inp.dtype == tf.int32:
            value = np.broadcast_to(np.arange(ways, dtype=np.int32), lead + (ways,))
        elif inp.key == sig.SUPPORT_TARGETS:
            value = rng.normal(size=lead + (ways, 1))
        else:
            value = rng.random(lead + (ways, *input_shape))
        arrays[inp.key] = np.ascontiguousarray(value, inp.dtype.as_numpy_dtype)
    return arrays


def _warmup_records(module: ServingModule, model_name: str) -> list[bytes]:
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    records = []
    for name, spec in module.specs.items():
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=name)
        )
        for key, value in warmup_arrays(spec, module._model.input_shape, module.ways).items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        records.append(log.SerializeToString())
    return records


def export_saved_model(module: ServingModule, base_dir: str, card: ModelCard) -> str:
    """Writes `module` to `base_dir/<next version>/` atomically and returns that path.

    The export is written beside the versions under a hidden name, checked by reloading it, and
    only then renamed into place, so a half-written or broken export never appears as a version.
    """
    card = dataclasses.replace(card, package_version=__version__)
    os.makedirs(base_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=base_dir)
    try:
        tf.saved_model.save(module, tmp, signatures=module.serving_signatures)
        extra = os.path.join(tmp, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, sig.CARD_FILE), "w") as f:
            f.write(card.to_json())
        with tf.io.TFRecordWriter(os.path.join(extra, sig.WARMUP_FILE)) as writer:
            for record in _warmup_records(module, card.name):
                writer.write(record)
        loaded = tf.saved_model.load(tmp)
        missing = set(sig.SIGNATURES) - set(loaded.signatures)
        if missing:
            raise RuntimeError(f"Export check failed: signatures {sorted(missing)} are missing.")
        if ModelCard.read(tmp) != card:
            raise RuntimeError("Export check failed: the model card does not read back as written.")
        version = next_version(base_dir)
        final = os.path.join(base_dir, str(version))
        os.rename(tmp, final)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclasses.dataclass(frozen=True)
class ExportedState:
    """What an export holds of a meta-training run: enough to evaluate, re-export or go on."""

    path: str
    card: ModelCard
    weights: list
    adam_step: float
    adam_v: list

    @property
    def meta_iterations(self) -> int:
        return self.card.meta_iterations

    def optimizer_state(self) -> AdamState | tuple:
        """The carried inner-optimizer state, as the trainer's `MetaState` gives it."""
        if self.card.recipe.sgd:
            return ()
        return AdamState(
            tf.constant(self.adam_step, tf.float32), tuple(tf.constant(v) for v in self.adam_v)
        )

    @property
    def version(self) -> int:
        return int(os.path.basename(os.path.normpath(self.path)))


def version_dir(path: str) -> str:
    """`path` if it is a SavedModel version folder, else the largest version folder in it."""
    versions = _versions(path)
    if versions and not os.path.exists(os.path.join(path, "saved_model.pb")):
        return os.path.join(path, str(max(versions)))
    return path


def read_exported_state(path: str) -> ExportedState:
    """Reads the initialization, Adam statistics and card of `path` (a version, or its base folder).

    A base folder (`saved_models/<name>`) means its largest integer version.
    """
    path = version_dir(path)
    name = os.path.basename(os.path.normpath(path))
    if not (name.isdigit() and os.path.exists(os.path.join(path, "saved_model.pb"))):
        raise ValueError(
            "Expected a keras-reptile SavedModel version folder (saved_model.pb and "
            f"assets.extra/{sig.CARD_FILE}) or its base folder. Received: path={path!r}"
        )
    card = ModelCard.read(path)
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
