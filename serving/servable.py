"""One loaded version of a model: its signatures, their defaults, its model card, its requests.

`Servable.run` is the one function that executes a validated request, for gRPC, REST and warmup
alike. As in `tensorflow_model_server`, the SavedModel is loaded into a TF1 `tf.compat.v1.Session`
(`tf.compat.v1.saved_model.loader.load`) and a signature is one `Session` run of its inputs and
outputs, given `RunOptions(timeout_in_ms=...)` from the request's deadline: TensorFlow stops a run
whose timeout passes mid-computation. The signatures write no variable, so concurrent runs share
nothing mutable.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

import grpc
import numpy as np
import tensorflow as tf

from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import ModelCard
from keras_reptile.export.saved_model import warmup_arrays
from keras_reptile.models import build_model
from keras_reptile.models.cost import ModelCost
from keras_reptile.task_kind import by_inputs
from serving import validation
from serving.cancellation import remaining_ms
from serving.errors import ServingError, from_tf_error, invalid

MAX_WARMUP_RECORDS = 1000  # TF Serving's kMaxNumRecords.
_INIT_OP = "__saved_model_init_op"


def _generic_spec(name: str, sdef) -> sig.SignatureSpec:
    """A spec read from a SignatureDef, for signatures outside the contract."""
    inputs = []
    for key, info in sorted(sdef.inputs.items()):
        shape = None
        if not info.tensor_shape.unknown_rank:
            shape = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
        inputs.append(sig.InputSpec(key, tf.as_dtype(info.dtype), shape, key in sdef.defaults))
    return sig.SignatureSpec(name, tuple(inputs), tuple(sorted(sdef.outputs)))


def _check_contract(name: str, sdef, spec: sig.SignatureSpec, path: str) -> None:
    got = {k: tf.as_dtype(v.dtype) for k, v in sdef.inputs.items()}
    want = {i.key: i.dtype for i in spec.inputs}
    if got != want or set(sdef.outputs) != set(spec.outputs):
        raise invalid(
            f"Signature {name} of the SavedModel at {path} does not follow the contract of "
            f"keras_reptile.export.signatures: inputs "
            f"{ {k: d.name for k, d in sorted(got.items())} } and outputs {sorted(sdef.outputs)}; "
            f"expected inputs { {k: d.name for k, d in sorted(want.items())} } and outputs "
            f"{sorted(spec.outputs)}."
        )


def _model_info(signature_defs, card: ModelCard | None) -> validation.ModelInfo:
    """Ways and input shape from the model card, or from the signatures of a card-less model."""
    if card is not None:
        return validation.ModelInfo(card.ways, tuple(card.input_shape), card.task_kind)
    default = signature_defs.get(sig.SERVING_DEFAULT)
    kind = by_inputs(default.inputs) if default is not None else None
    shape = ways = None
    if kind is not None:
        shape = [d.size for d in default.inputs[kind.example_key].tensor_shape.dim][1:]
        ways = kind.ways
        if sig.LOGITS in default.outputs:
            ways = default.outputs[sig.LOGITS].tensor_shape.dim[-1].size
    if shape is None or ways is None or int(ways) < 1 or any(d < 1 for d in shape):
        raise invalid(
            f"Cannot tell the model's ways and input shape: it has no {sig.CARD_FILE} and its "
            f"signatures do not say (ways={ways}, input_shape={shape})."
        )
    return validation.ModelInfo(int(ways), tuple(int(d) for d in shape), kind)


def _num_weights(signature_defs) -> int | None:
    """The length of a task's `adapted_weights`, from the `adapt` SignatureDef (None without
    one: a version exported before the split signatures)."""
    adapt = signature_defs.get(sig.ADAPT)
    if adapt is None or sig.ADAPTED_WEIGHTS not in adapt.outputs:
        return None
    size = adapt.outputs[sig.ADAPTED_WEIGHTS].tensor_shape.dim[-1].size
    return int(size) if size > 0 else None


class Servable:
    """A loaded version. Build it with `Servable.load`.

    Attributes:
        name, version, path: which model version this is and where it was loaded from.
        info: ModelInfo. Ways and input shape from the model card (or, without one, from the
            signatures).
        card: ModelCard or None. The model card, if the SavedModel has one (served as is by
            GetModelMetadata's `model_card` field and REST's `/model_card`).
        signature_defs: dict name -> SignatureDef proto (what GetModelMetadata returns).
        specs: dict name -> SignatureSpec of each callable signature.
    """

    def __init__(self, name, version, path, session, signature_defs, card):
        self.name, self.version, self.path = name, int(version), path
        self._session = session  # holds the graph and its variables
        self.signature_defs = signature_defs
        self.card = card
        self.info = _model_info(signature_defs, card)
        contract = sig.signature_specs(
            self.info.input_shape, self.info.task_kind, _num_weights(signature_defs)
        )
        self.specs, self.defaults = {}, {}
        for name_, sdef in signature_defs.items():
            if name_ == _INIT_OP:
                continue
            if name_ in contract:
                _check_contract(name_, sdef, contract[name_], path)
                self.specs[name_] = contract[name_]
            else:
                self.specs[name_] = _generic_spec(name_, sdef)
            self.defaults[name_] = {k: tf.make_ndarray(v) for k, v in sdef.defaults.items()}
        self._callables: dict[tuple, tuple] = {}
        self._model_cost: ModelCost | None = None
        self._callables_lock = threading.Lock()
        self._cond = threading.Condition()
        self._in_flight, self._retired = 0, False

    @classmethod
    def load(cls, name: str, version: int, path: str) -> Servable:
        """Loads the SavedModel at `path` (tag `serve`) into a Session, with its model card.

        The Session's thread pools are sized as TensorFlow's (`tf.config.threading`).
        """
        card = None
        if os.path.exists(os.path.join(path, "assets.extra", sig.CARD_FILE)):
            try:
                card = ModelCard.read(path)
            except ValueError as e:
                raise invalid(str(e)) from None
        graph = tf.Graph()
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=tf.config.threading.get_intra_op_parallelism_threads(),
            inter_op_parallelism_threads=tf.config.threading.get_inter_op_parallelism_threads(),
        )
        session = tf.compat.v1.Session(graph=graph, config=config)
        try:
            with graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
            return cls(name, version, path, session, dict(meta_graph.signature_def), card)
        except RuntimeError as e:  # the loader's "MetaGraphDef associated with tags ..."
            session.close()
            message = f"The SavedModel at {path} has no MetaGraph tagged 'serve': {e}"
            raise invalid(message) from None
        except BaseException:
            session.close()
            raise

    def model_cost(self) -> ModelCost | None:
        """Per-example costs of the model the card's recipe builds (None without a card), for
        `serving.cost`; built once."""
        with self._callables_lock:
            if self._model_cost is None and self.card is not None:
                model = build_model(
                    self.card.recipe.model, self.card.recipe.classes, self.info.input_shape
                )
                self._model_cost = ModelCost.of(model)
            return self._model_cost

    def close(self) -> None:
        """Frees the Session (its graph and variables); the version serves no more."""
        self._session.close()

    def __repr__(self) -> str:
        return f"Servable({self.name!r}, version={self.version})"

    # Requests.

    def spec(self, signature_name: str) -> sig.SignatureSpec:
        """The spec of a callable signature (FAILED_PRECONDITION if there is none)."""
        if signature_name not in self.specs:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Serving signature key "{signature_name}" not found. Signatures of model '
                f"{self.name} version {self.version}: {sorted(self.specs)}.",
            )
        return self.specs[signature_name]

    def prepare(
        self, signature_name: str, arrays: Mapping[str, np.ndarray], limits: validation.Limits
    ) -> dict[str, np.ndarray]:
        """Fills omitted optional inputs from the SignatureDef defaults, then checks the values."""
        defaults = self.defaults[signature_name]
        defaulted = [k for k in defaults if k not in arrays]
        full = {**{k: defaults[k] for k in defaulted}, **arrays}
        validation.check_input_names(self.spec(signature_name), full)
        validation.check_values(self.spec(signature_name), full, self.info, limits, defaulted)
        return full

    def run(
        self,
        signature_name: str,
        arrays: Mapping[str, np.ndarray],
        deadline: float | None = None,
        check_outputs: bool = True,
        deadline_reason: str = "the deadline passed",
    ) -> dict[str, np.ndarray]:
        """Executes a prepared request; every output is checked to be finite (`check_outputs`).

        `deadline` (a `time.monotonic()` value) is the run's timeout: TensorFlow stops the
        computation when it passes (DEADLINE_EXCEEDED, the message ending `deadline_reason`).
        """
        context = self._context(signature_name)
        call, keys, outputs = self._callable(signature_name, tuple(sorted(arrays)))
        options = tf.compat.v1.RunOptions(timeout_in_ms=remaining_ms(deadline))
        try:
            values = call(*(arrays[k] for k in keys), options=options)
        except tf.errors.DeadlineExceededError:
            raise ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"Running {context} was stopped: {deadline_reason}.",
            ) from None
        except Exception as e:  # reported to the client as a status
            raise from_tf_error(e, context) from None
        result = dict(zip(outputs, values))
        if check_outputs:
            self.check_outputs(signature_name, result)
        return result

    def _callable(self, signature_name: str, keys: tuple[str, ...]) -> tuple:
        """The Session callable feeding `keys` and fetching every output (made once)."""
        with self._callables_lock:
            found = self._callables.get((signature_name, keys))
            if found is None:
                sdef = self.signature_defs[signature_name]
                graph = self._session.graph
                outputs = tuple(sorted(sdef.outputs))
                call = self._session.make_callable(
                    [graph.get_tensor_by_name(sdef.outputs[k].name) for k in outputs],
                    [graph.get_tensor_by_name(sdef.inputs[k].name) for k in keys],
                    accept_options=True,
                )
                found = self._callables[signature_name, keys] = (call, keys, outputs)
            return found

    def _context(self, signature_name: str) -> str:
        return f'signature "{signature_name}" of model {self.name} version {self.version}'

    def check_outputs(self, signature_name: str, outputs: Mapping[str, np.ndarray]) -> None:
        """INTERNAL if an output holds NaN or Inf: never returned as a prediction."""
        for key, value in outputs.items():
            if value.dtype.kind in "fc":
                bad = int(value.size - np.count_nonzero(np.isfinite(value)))
                if bad:
                    raise ServingError(
                        grpc.StatusCode.INTERNAL,
                        f'The model produced {bad} non-finite values (NaN or Inf) in output "{key}"'
                        f" of {self._context(signature_name)}; no prediction is returned. A "
                        "smaller learning_rate or fewer inner_steps usually avoids this.",
                    )

    # In-flight requests.

    def acquire(self) -> bool:
        """Counts a request in; False once the version is being unloaded."""
        with self._cond:
            if self._retired:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._cond.notify_all()

    def retire(self, timeout: float | None = None) -> bool:
        """Refuses new requests and waits for those in flight; True if none is left."""
        with self._cond:
            self._retired = True
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout)

    # Warmup.

    def warm_up(self, limits: validation.Limits) -> int:
        """Replays `assets.extra/tf_serving_warmup_requests` (or a synthetic request per
        signature if there is none) through `prepare` and `run`; returns the number run."""
        requests = self._warmup_requests(limits) or self._synthetic_requests()
        for signature_name, arrays in requests:
            self.run(signature_name, self.prepare(signature_name, arrays, limits))
        return len(requests)

    def _warmup_requests(self, limits: validation.Limits) -> list:
        from tensorflow_serving.apis import prediction_log_pb2

        path = os.path.join(self.path, "assets.extra", sig.WARMUP_FILE)
        if not os.path.exists(path):
            return []
        requests = []
        try:
            records = list(tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS + 1))
        except tf.errors.OpError as e:
            raise ServingError(
                grpc.StatusCode.DATA_LOSS,
                f"Failed to read warmup data at {path}: {e.message}. Please verify your warmup "
                "data is in TFRecord format.",
            ) from None
        if len(records) > MAX_WARMUP_RECORDS:
            raise invalid(
                f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}"
            )
        for record in records:
            try:
                log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            except Exception as e:
                raise invalid(f"Failed to parse warmup record at {path}: {e}") from None
            kind = log.WhichOneof("log_type")
            if kind != "predict_log":
                raise ServingError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"Unsupported log_type for warmup: {kind} (this server replays predict_log).",
                )
            request = log.predict_log.request
            name = request.model_spec.signature_name or sig.SERVING_DEFAULT
            arrays = validation.arrays_from_protos(self.spec(name), request.inputs, limits)
            requests.append((name, arrays))
        return requests

    def _synthetic_requests(self) -> list:
        """One valid request per signature of the contract (a SavedModel without warmup)."""
        return [
            (name, warmup_arrays(self.specs[name], self.info.input_shape, self.info.ways))
            for name in sig.SIGNATURES
            if name in self.specs
        ]
