"""Writes meta-initialized SavedModels in TensorFlow Serving's versioned layout."""

from __future__ import annotations

import dataclasses
import inspect
import os
import shutil
import tempfile
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from keras_reptile import __version__, protocol_rules
from keras_reptile.algorithms import (
    AdamState,
    InnerOptimizer,
    Settings,
    StackedModel,
    adapt,
    adapt_and_predict,
    flatten_weights,
    predict,
    stack,
    unflatten_weights,
)
from keras_reptile.config import Protocol
from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import ModelCard

# Tasks of one multi-task call running at the same time.
_PARALLEL_TASKS = 4
# Every value of the warmup requests' adapted weights.
WARMUP_WEIGHT = 0.01


class ServingModule(tf.Module):
    """Tracks the raw weight and Adam variables and defines the serving signatures.

    Only plain `tf.Variable`s are tracked (never the Keras model, whose SavedModel copies of its
    variables break TF1-Session loading), and nothing ever writes them: adaptation runs on
    tensors inside a `tf.while_loop`, so concurrent requests cannot disturb each other. Every
    signature runs the stacked implementation on one task at a time (a stack of one); a
    multi-task signature runs its single-task form on each task. `adapt_and_predict` runs
    `keras_reptile.algorithms.adapt_and_predict`, as the evaluator does; `adapt` followed by
    `predict_adapted` runs its two halves, with the adapted weights flattened in between.

    Args:
        model: StackedModel. The architecture.
        weights: list of arrays. The meta-initialization.
        optimizer: InnerOptimizer. The inner optimizer used at evaluation.
        adam_step, adam_v: the carried Adam statistics (ignored for SGD).
        protocol: Protocol. What the optional inputs default to.
        ways: int. Classes per task.
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
        self._kind = model.task_kind
        self.specs = sig.signature_specs(model.input_shape, self._kind, model.num_weights)
        self.__dict__["serving_signatures"] = self._build_signatures()

    def _initialization(self):
        """The meta-initialization (no task axis) and the carried optimizer state."""
        weights = [w.read_value() for w in self.weights]
        if self._optimizer.kind == "sgd":
            return weights, ()
        return weights, AdamState(
            self.adam_step.read_value(), tuple(v.read_value() for v in self.adam_v)
        )

    # One task, as a stack of one: `[1, ...]` in and out; `inputs` holds the request's scalars.

    def _adapt_and_predict_task(self, inputs, support_x, support_y, query_x) -> dict:
        weights, state = self._initialization()
        (outputs,) = adapt_and_predict(
            self._model,
            self._optimizer,
            weights,
            state,
            support_x,
            support_y,
            query_x,
            _settings(inputs),
            _seeds(),
            (self._answer(inputs),),
        )
        return self._kind.served(outputs)

    def _adapt_task(self, inputs, support_x, support_y) -> dict:
        weights, state = self._initialization()
        adapted = adapt(
            self._model,
            self._optimizer,
            weights,
            state,
            support_x,
            support_y,
            _settings(inputs),
            _seeds(),
        )
        return {sig.ADAPTED_WEIGHTS: flatten_weights(adapted)}

    def _predict_adapted_task(self, inputs, flat, query_x, support_x=None) -> dict:
        """`support_x` is read by the non-transductive answer of a model with BatchNorm."""
        adapted = unflatten_weights(flat, self._model.weight_shapes)
        outputs = predict(self._model, adapted, support_x, query_x, self._answer(inputs))
        return self._kind.served(outputs)

    def _answer(self, inputs: dict):
        """The request's `transductive` input, or the one answer of a kind without it."""
        if sig.TRANSDUCTIVE in inputs:
            return inputs[sig.TRANSDUCTIVE]
        (answer,) = self._kind.answers
        return answer.transductive

    # The signatures' bodies: inputs keyed by the contract, each `[T, ...]` (scalars as sent).

    def _per_task(self, fn, tensors: tuple, outputs: tuple[str, ...]) -> dict:
        """`fn`'s outputs on each task of `tensors` (each `[T, ...]`) run as a stack of one.

        A task count known only at run time maps the tasks: each adapts as a stack of one, so its
        answer is the one it gets alone; the executor runs tasks side by side. Its outputs are
        derived task by task too: Eigen's softmax rounds an element differently depending on
        where it falls in the whole tensor (vectorised or scalar exp).
        """
        if tensors[0].shape[0] == 1:
            return fn(*tensors)

        def task(parts):
            return {k: v[0] for k, v in fn(*(part[None] for part in parts)).items()}

        return tf.map_fn(
            task,
            tensors,
            fn_output_signature={k: sig.OUTPUT_DTYPES[k] for k in outputs},
            parallel_iterations=_PARALLEL_TASKS,
        )

    def _serving_default(self, inputs: dict) -> dict:
        weights, _ = self._initialization()
        return self._kind.served(self._model(stack(weights, 1), inputs[self._kind.example_key]))

    def _task_body(self, name: str, per_task, keys: tuple[str, ...]):
        """The body of signature `name` (single-task or multi-task): the request's checks, then
        `per_task(inputs, *tensors)` on each task of the inputs `keys` it has."""
        outputs = self.specs[name].outputs

        def body(inputs: dict) -> dict:
            with tf.control_dependencies(self._checks(inputs)):
                tensors = tuple(inputs[k] for k in keys if k in inputs)
                return self._per_task(lambda *t: per_task(inputs, *t), tensors, outputs)

        return body

    def _checks(self, inputs: dict) -> list:
        """In-graph checks of a request (`tf.debugging` assertions, so TensorFlow Serving reports
        them too) on whichever of the contract's inputs it has."""
        k = self._kind.keys
        support, targets, query, adapted = (
            inputs.get(key) for key in (k.support, k.targets, k.query, sig.ADAPTED_WEIGHTS)
        )
        tasks = support if support is not None else adapted
        checks = [tf.debugging.assert_greater(tf.shape(tasks)[0], 0, message="no task was sent")]
        if support is not None:
            checks.append(tf.debugging.assert_greater(
                tf.shape(support)[1], 0, message="the support set is empty"
            ))  # fmt: skip
        if targets is not None:
            checks.append(tf.debugging.assert_equal(
                tf.shape(support)[:2],
                tf.shape(targets)[:2],
                message="support inputs and their labels/targets differ in count",
            ))  # fmt: skip
        if support is not None and query is not None:
            checks.append(tf.debugging.assert_equal(
                tf.shape(support)[0],
                tf.shape(query)[0],
                message="support and query task counts differ",
            ))  # fmt: skip
        if adapted is not None:
            size = self._model.num_weights
            checks += [
                tf.debugging.assert_equal(
                    tf.shape(adapted)[1],
                    size,
                    message=f"{sig.ADAPTED_WEIGHTS} must hold {size} values per task",
                ),
                tf.debugging.assert_equal(
                    tf.shape(adapted)[0],
                    tf.shape(query)[0],
                    message=f"{sig.ADAPTED_WEIGHTS} and query task counts differ",
                ),
            ]
        for rule in protocol_rules.RULES:  # the rules the server and a recipe's protocol apply
            if rule.key in inputs:
                checks += rule.graph_check(inputs[rule.key])
        if targets is not None:
            checks += self._kind.graph_checks(targets, self.ways)
        return checks

    def _build_signatures(self) -> dict:
        p = self.protocol
        defaults = {
            sig.INNER_STEPS: tf.constant(p.eval_iters, tf.int32),
            sig.INNER_BATCH_SIZE: tf.constant(p.eval_batch, tf.int32),
            sig.LEARNING_RATE: tf.constant(p.learning_rate, tf.float32),
            sig.TRANSDUCTIVE: tf.constant(p.transductive),
        }
        k = self._kind.keys
        families = {  # each single-task signature: its per-task function and task inputs
            sig.ADAPT_AND_PREDICT: (self._adapt_and_predict_task, (k.support, k.targets, k.query)),
            sig.ADAPT: (self._adapt_task, (k.support, k.targets)),
            sig.PREDICT_ADAPTED: (
                self._predict_adapted_task,
                (sig.ADAPTED_WEIGHTS, k.query, k.support),
            ),
        }
        bodies = {sig.SERVING_DEFAULT: self._serving_default}
        for single, multi in sig.MULTI_TASK.items():
            for name in (single, multi):
                bodies[name] = self._task_body(name, *families[single])
        return {
            name: _signature_function(spec, defaults, bodies[name])
            for name, spec in self.specs.items()
        }


def _seeds() -> tf.Tensor:
    """Every task draws its mini-batches with the same fixed seed, as it would alone."""
    return tf.constant([sig.SERVING_BATCH_SEED], tf.int64)


def _settings(inputs: dict) -> Settings:
    return Settings(
        inputs[sig.INNER_STEPS], inputs[sig.INNER_BATCH_SIZE], inputs[sig.LEARNING_RATE]
    )


def _signature_function(spec: sig.SignatureSpec, defaults: dict, body) -> tf.function:
    """The `tf.function` of signature `spec`: its arguments are the spec's input keys, an
    optional one defaulting to its tensor in `defaults` (a `PlaceholderWithDefault` in the
    graph, a default in the SignatureDef); it returns `body(inputs)`.

    `body` takes and returns tensors with a leading task axis; a single-task signature's inputs
    (all but its scalars) get one of length 1, and its outputs lose it.
    """
    parameters = [
        inspect.Parameter(
            i.key,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=defaults[i.key] if i.optional else inspect.Parameter.empty,
        )
        for i in spec.inputs
    ]
    signature = inspect.Signature(parameters)
    tasks = spec.name in sig.TASK_SIGNATURES

    def fn(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        inputs = dict(bound.arguments)
        if tasks:
            return body(inputs)
        stacked = {k: v if spec.input(k).shape == () else v[None] for k, v in inputs.items()}
        return {k: v[0] for k, v in body(stacked).items()}

    fn.__signature__ = signature
    fn.__name__ = spec.name
    return tf.function(fn, input_signature=[i.tensor_spec() for i in spec.inputs])


def _versions(base_dir: str) -> list[int]:
    """The integer version folders in `base_dir` (none if it is not a folder)."""
    if not os.path.isdir(base_dir):
        return []
    return [int(n) for n in os.listdir(base_dir) if n.isdigit()]


def next_version(base_dir: str) -> int:
    """One more than the largest integer version folder in `base_dir` (1 if none)."""
    return max(_versions(base_dir), default=0) + 1


def warmup_arrays(spec: sig.SignatureSpec, input_shape, ways: int, seed: int = 0) -> dict:
    """A valid request's required inputs for `spec`: one example per class (values 0 or 1) and
    constant adapted weights (two tasks of them for a multi-task signature)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for inp in spec.inputs:
        if inp.optional:
            continue
        lead = (2,) if inp.tasks else ()
        if inp.key == sig.ADAPTED_WEIGHTS:
            if inp.shape[-1] is None:
                raise ValueError(
                    f"Warmup needs the length of {sig.ADAPTED_WEIGHTS}. Received: shape={inp.shape}"
                )
            value = np.full(lead + (inp.shape[-1],), WARMUP_WEIGHT)
        elif inp.dtype == tf.int32:
            value = np.broadcast_to(np.arange(ways, dtype=np.int32), lead + (ways,))
        elif inp.key == sig.SUPPORT_TARGETS:
            value = rng.normal(size=lead + (ways, 1))
        else:  # 0 or 1 in each value, as Omniglot's strokes: the warmup file compresses well
            value = rng.integers(0, 2, lead + (ways, *input_shape))
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
            if key == sig.ADAPTED_WEIGHTS:  # one value, repeated by TensorFlow to the shape
                proto = tf.make_tensor_proto(value.flat[0], tf.float32, value.shape)
            else:
                proto = tf.make_tensor_proto(value)
            request.inputs[key].CopyFrom(proto)
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        records.append(log.SerializeToString())
    return records


def export_saved_model(
    module: ServingModule,
    base_dir: str,
    card: ModelCard,
    *,
    version: int | None = None,
    verify: Callable[[str], None] | None = None,
) -> str:
    """Writes `module` to `base_dir/<version>/` atomically and returns that path.

    The export is written beside the versions under a hidden name, checked by reloading it (and
    by `verify`, called with its path), and only then renamed into place, so a half-written or
    broken export never appears as a version.

    Args:
        module: ServingModule. What to export.
        base_dir: str. The model's base folder.
        card: ModelCard. Its card (`package_version` is set to this package's).
        version: int or None. None: the next version. An existing version is replaced: it is
            moved aside under a hidden name, the new one renamed into place, the old one deleted.
        verify: optional function of the written folder's path that raises if it is not fit to
            become the version.
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
        if verify is not None:
            verify(tmp)
        final = os.path.join(base_dir, str(next_version(base_dir) if version is None else version))
        _move_into_place(tmp, final)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(src: str, final: str) -> None:
    """Renames `src` to `final`, replacing (then deleting) a folder already there."""
    if not os.path.exists(final):
        os.rename(src, final)
        return
    old = tempfile.mkdtemp(prefix=".replaced-", dir=os.path.dirname(final))
    aside = os.path.join(old, os.path.basename(final))
    os.rename(final, aside)
    try:
        os.rename(src, final)
    except BaseException:
        os.rename(aside, final)
        raise
    finally:
        if not os.path.exists(aside) or os.path.exists(final):
            shutil.rmtree(old, ignore_errors=True)


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
