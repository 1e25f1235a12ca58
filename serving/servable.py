"""One loaded version of a model: its signatures, their defaults, its model card, its requests.

`Servable.run` is the one function that executes a validated request, for gRPC, REST and warmup
alike. It calls the concrete signature functions of `tf.saved_model.load`, which never write a
variable, so concurrent requests share nothing mutable.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.python.saved_model import loader_impl

from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import ModelCard
from keras_reptile.export.saved_model import warmup_arrays
from serving import validation
from serving.cancellation import Cancellation
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
        return validation.ModelInfo(card.ways, tuple(card.input_shape), card.regression)
    default = signature_defs.get(sig.SERVING_DEFAULT)
    regression = default is not None and sig.INPUTS in default.inputs
    shape = ways = None
    if default is not None:
        key = sig.INPUTS if regression else sig.IMAGES
        if key in default.inputs:
            shape = [d.size for d in default.inputs[key].tensor_shape.dim][1:]
        ways = 1 if regression else None
        if sig.LOGITS in default.outputs:
            ways = default.outputs[sig.LOGITS].tensor_shape.dim[-1].size
    if shape is None or ways is None or int(ways) < 1 or any(d < 1 for d in shape):
        raise invalid(
            f"Cannot tell the model's ways and input shape: it has no {sig.CARD_FILE} and its "
            f"signatures do not say (ways={ways}, input_shape={shape})."
        )
    return validation.ModelInfo(int(ways), tuple(int(d) for d in shape), regression)


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

    def __init__(self, name, version, path, loaded, signature_defs, card):
        self.name, self.version, self.path = name, int(version), path
        self._loaded = loaded  # keeps the functions' variables alive
        self.signature_defs = signature_defs
        self.card = card
        self.info = _model_info(signature_defs, card)
        contract = sig.signature_specs(
            self.info.input_shape, self.info.regression, _num_weights(signature_defs)
        )
        self._functions, self.specs, self.defaults = {}, {}, {}
        for name_, fn in loaded.signatures.items():
            sdef = signature_defs[name_]
            if name_ in contract:
                _check_contract(name_, sdef, contract[name_], path)
                self.specs[name_] = contract[name_]
            else:
                self.specs[name_] = _generic_spec(name_, sdef)
            self._functions[name_] = fn
            self.defaults[name_] = {k: tf.make_ndarray(v) for k, v in sdef.defaults.items()}
        self._cond = threading.Condition()
        self._in_flight, self._retired = 0, False

    @classmethod
    def load(cls, name: str, version: int, path: str) -> Servable:
        """Loads the SavedModel at `path` (tag `serve`) with its model card."""
        saved_model = loader_impl.parse_saved_model(path)
        graphs = [g for g in saved_model.meta_graphs if "serve" in g.meta_info_def.tags]
        if not graphs:
            raise invalid(f"The SavedModel at {path} has no MetaGraph tagged 'serve'.")
        signature_defs = dict(graphs[0].signature_def)
        card = None
        if os.path.exists(os.path.join(path, "assets.extra", sig.CARD_FILE)):
            try:
                card = ModelCard.read(path)
            except ValueError as e:
                raise invalid(str(e)) from None
        loaded = tf.saved_model.load(path, tags=["serve"])
        return cls(name, version, path, loaded, signature_defs, card)

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
        cancellation: Cancellation | None = None,
        check_outputs: bool = True,
    ) -> dict[str, np.ndarray]:
        """Executes a prepared request; every output is checked to be finite (`check_outputs`).

        `cancellation`, when cancelled, stops the computation (DEADLINE_EXCEEDED or CANCELLED).
        """
        context = self._context(signature_name)
        fn = self._functions[signature_name]
        scope = cancellation.active() if cancellation else contextlib.nullcontext()
        try:
            with scope:
                result = fn(**{k: tf.constant(v) for k, v in arrays.items()})
                outputs = {k: v.numpy() for k, v in result.items()}
        except Exception as e:  # reported to the client as a status
            if cancellation is not None and cancellation.code is not None:
                raise ServingError(
                    cancellation.code, f"Running {context} was stopped: {cancellation.reason}."
                ) from None
            raise from_tf_error(e, context) from None
        if check_outputs:
            self.check_outputs(signature_name, outputs)
        return outputs

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
