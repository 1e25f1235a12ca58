"""The server's operations, independent of gRPC or REST.

Both protocols resolve the model the same way, decode their tensors with `validation`, and execute
through `Servable.prepare` and `Servable.run`, so an answer never depends on the protocol. Metadata
is TF Serving's `signature_def` plus this server's `model_card` (the version's
`keras_reptile.export.model_card.ModelCard`), which TF Serving itself does not have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import grpc
import numpy as np

from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import ModelCard
from serving import cost, validation
from serving.adaptation_cache import AdaptationCache, adaptation_key
from serving.admission import Admission
from serving.batching import TaskBatcher
from serving.cancellation import Cancellation, Timeouts
from serving.cost import CostLimits
from serving.errors import ServingError, invalid, not_found
from serving.metrics import ServingMetrics
from serving.model_config import ModelServerConfig
from serving.model_manager import ModelManager, VersionStatus

SIGNATURE_DEF = "signature_def"  # GetModelMetadataImpl::kSignatureDef
MODEL_CARD = "model_card"  # this server's extension: the version's model card as JSON
METADATA_FIELDS = (SIGNATURE_DEF, MODEL_CARD)

# Turns a signature spec into the request's arrays, checking names, dtypes and shapes.
Decoder = Callable[[sig.SignatureSpec], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Target:
    """Which model version a request asks for: the latest, a number, or a label."""

    name: str
    version: int | None = None
    label: str | None = None


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    version: int
    signature_name: str
    outputs: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Metadata:
    """A version's metadata: its signatures and, when asked for, its model card."""

    name: str
    version: int
    signature_defs: dict
    card: ModelCard | None


def check_deadline(deadline: float | None, what: str) -> None:
    """Raises DEADLINE_EXCEEDED if `deadline` (a `time.monotonic()` value) has passed."""
    if deadline is not None and time.monotonic() >= deadline:
        raise ServingError(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"Deadline exceeded before {what} could run."
        )


def check_cancelled(cancellation: Cancellation | None, what: str) -> None:
    """Raises the cancellation's status if the request was cancelled before `what` ran."""
    if cancellation is not None and cancellation.code is not None:
        raise ServingError(
            cancellation.code, f"Stopped before {what} could run: {cancellation.reason}."
        )


def _deadline_reason(cancellation: Cancellation | None) -> str:
    return cancellation.deadline_reason if cancellation is not None else "the deadline passed"


def _check_output_filter(spec: sig.SignatureSpec, output_filter: Sequence[str]) -> None:
    seen = set()
    for alias in output_filter:
        if alias not in spec.outputs:
            raise invalid(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                f"the set {{{','.join(sorted(spec.outputs))}}}."
            )
        if alias in seen:
            raise invalid(f"duplicate output tensor alias: {alias}")
        seen.add(alias)


class Service:
    """Predict, Classify, metadata and status over a `ModelManager`.

    With a `TaskBatcher`, `adapt_and_predict` requests run batched as multi-task adaptations.
    `timeouts` are the deadlines both front ends give requests; `admission` bounds the
    computations running and waiting (none: no bound); `cost_limits` refuse requests whose
    estimated cost is over them (none: no limit); `metrics` records requests and runs.
    """

    def __init__(
        self,
        manager: ModelManager,
        limits: validation.Limits,
        batcher: TaskBatcher | None = None,
        *,
        timeouts: Timeouts | None = None,
        admission: Admission | None = None,
        metrics: ServingMetrics | None = None,
        cost_limits: CostLimits | None = None,
        allow_reload: bool = True,
        cache: AdaptationCache | None = None,
    ):
        self.manager, self.limits, self.batcher = manager, limits, batcher
        self.allow_reload, self.cache = allow_reload, cache
        if cache is not None:
            manager.unload_listeners.append(cache.drop)
        self.timeouts = timeouts if timeouts is not None else Timeouts()
        self.admission, self.metrics, self.cost_limits = admission, metrics, cost_limits

    def _check_cost(self, servable, signature_name: str, arrays) -> None:
        """RESOURCE_EXHAUSTED if the request's estimated work or memory is over the limits
        (before any work; a model without a card is not estimated)."""
        if self.cost_limits is None:
            return
        model = servable.model_cost()
        if model is None:
            return
        shape = cost.request_shape(servable.spec(signature_name), arrays, servable.info.input_shape)
        self.cost_limits.check(cost.estimate(model, shape))

    def _run(self, servable, signature_name, arrays, deadline, cancellation) -> dict:
        """Runs a prepared request once admitted (a computation slot), unless cancelled first."""
        slot = (
            self.admission.slot(deadline, cancellation)
            if self.admission is not None
            else contextlib.nullcontext()
        )
        with slot:
            check_cancelled(cancellation, f'signature "{signature_name}"')
            return servable.run(
                signature_name, arrays, deadline, deadline_reason=_deadline_reason(cancellation)
            )

    def _cacheable(self, servable, signature_name: str) -> bool:
        """Whether a request goes through the adapted-weight cache: single-task
        `adapt_and_predict` or `adapt`, on a version with the split signatures."""
        return (
            self.cache is not None
            and self.cache.capacity > 0
            and signature_name in (sig.ADAPT_AND_PREDICT, sig.ADAPT)
            and {sig.ADAPT, sig.PREDICT_ADAPTED} <= set(servable.specs)
        )

    def _through_cache(
        self, servable, signature_name, arrays, deadline, cancellation
    ) -> tuple[dict, bool]:
        """`adapt` once per support set and settings (keyed by their SHA-256 with the model and
        version), then `predict_adapted`: the same answers as `adapt_and_predict`, which the
        split signatures equal bit for bit. Returns the outputs and whether the adaptation was
        reused."""
        keys = servable.info.task_kind.keys
        support = {k: arrays[k] for k in (keys.support, keys.targets)}
        settings = {
            k: arrays[k]
            for k in (sig.INNER_STEPS, sig.INNER_BATCH_SIZE, sig.LEARNING_RATE)
            if k in arrays
        }
        key = adaptation_key(servable.name, servable.version, support, settings)

        batched = self.batcher is not None and sig.ADAPT_TASKS in servable.specs

        def run(signature, inputs):
            if batched:
                return self.batcher.submit(servable, inputs, deadline, cancellation, signature)
            return self._run(servable, signature, inputs, deadline, cancellation)

        def adapt():
            return run(sig.ADAPT, {**support, **settings})[sig.ADAPTED_WEIGHTS]

        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            weights, hit = self.cache.get_or_adapt(
                key, (servable.name, servable.version), adapt, wait
            )
        except TimeoutError as error:
            raise ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "Deadline exceeded while waiting for the same task's adaptation, which another "
                "request is running.",
            ) from error
        if self.metrics is not None:
            self.metrics.record_cache(servable.name, hit, self.cache.stats())
        if signature_name == sig.ADAPT:
            return {sig.ADAPTED_WEIGHTS: weights}, hit
        inputs = {sig.ADAPTED_WEIGHTS: weights, keys.query: arrays[keys.query]}
        predict_inputs = {i.key for i in servable.spec(sig.PREDICT_ADAPTED).inputs}
        for key in (keys.support, sig.TRANSDUCTIVE):  # the non-transductive answer's
            if key in predict_inputs and key in arrays:
                inputs[key] = arrays[key]
        return run(sig.PREDICT_ADAPTED, inputs), hit

    def _record_runtime(
        self, servable, api: str, signature_name: str, arrays, start: float, reused=False
    ):
        """The run's wall time, and the tasks it adapted with their inner steps (none when the
        cache reused the adaptation)."""
        if self.metrics is None:
            return
        tasks = steps = 0
        if sig.INNER_STEPS in arrays and not reused:
            steps = int(arrays[sig.INNER_STEPS])
            task_axis = [i.key for i in servable.spec(signature_name).inputs if i.tasks]
            tasks = len(arrays[task_axis[0]]) if task_axis else 1
        seconds = time.monotonic() - start
        self.metrics.record_runtime(servable.name, api, seconds, tasks, steps)

    def predict(
        self,
        target: Target,
        signature_name: str,
        decode: Decoder,
        output_filter: Sequence[str] = (),
        deadline: float | None = None,
        cancellation: Cancellation | None = None,
    ) -> Result:
        """Resolves the version, decodes and checks the inputs, runs the signature."""
        signature_name = signature_name or sig.SERVING_DEFAULT
        with self.manager.servable(target.name, target.version, target.label) as servable:
            spec = servable.spec(signature_name)
            _check_output_filter(spec, output_filter)
            arrays = servable.prepare(signature_name, decode(spec), self.limits)
            self._check_cost(servable, signature_name, arrays)
            check_deadline(deadline, "the prediction")
            start = time.monotonic()
            reused = False
            if self._cacheable(servable, signature_name):
                outputs, reused = self._through_cache(
                    servable, signature_name, arrays, deadline, cancellation
                )
            elif (
                self.batcher is not None
                and signature_name == sig.ADAPT_AND_PREDICT
                and sig.ADAPT_AND_PREDICT_TASKS in servable.specs
            ):
                outputs = self.batcher.submit(servable, arrays, deadline, cancellation)
            else:
                outputs = self._run(servable, signature_name, arrays, deadline, cancellation)
            self._record_runtime(servable, "Predict", signature_name, arrays, start, reused)
        if output_filter:
            outputs = {k: outputs[k] for k in output_filter}
        return Result(servable.name, servable.version, signature_name, outputs)

    def classify(
        self,
        target: Target,
        signature_name: str,
        examples: Sequence[Mapping[str, np.ndarray]],
        deadline: float | None = None,
        cancellation: Cancellation | None = None,
    ) -> Result:
        """Class probabilities of `serving_default` for examples holding a flattened image.

        Each example maps feature names to arrays; feature `images` holds the image's values
        (float32, flattened in row-major order). Outputs: `probabilities` [examples, ways].
        """
        signature_name = signature_name or sig.SERVING_DEFAULT
        with self.manager.servable(target.name, target.version, target.label) as servable:
            spec = servable.spec(signature_name)
            kind = servable.info.task_kind
            if sig.PROBABILITIES not in kind.outputs or signature_name != sig.SERVING_DEFAULT:
                raise invalid(
                    f'Classify fits only the "{sig.SERVING_DEFAULT}" signature of classification '
                    f'models; received signature "{signature_name}" of {kind.name} model '
                    f"{servable.name}. Use Predict for it."
                )
            images = self._example_images(examples, servable.info.input_shape)
            arrays = validation.check_arrays(spec, {sig.IMAGES: images}, self.limits)
            arrays = servable.prepare(signature_name, arrays, self.limits)
            self._check_cost(servable, signature_name, arrays)
            check_deadline(deadline, "the classification")
            start = time.monotonic()
            outputs = self._run(servable, signature_name, arrays, deadline, cancellation)
            self._record_runtime(servable, "Classify", signature_name, arrays, start)
        probabilities = outputs[sig.PROBABILITIES]
        return Result(servable.name, servable.version, signature_name, {"scores": probabilities})

    @staticmethod
    def _example_images(examples, input_shape) -> np.ndarray:
        if not examples:
            raise invalid("Input is empty.")
        size = int(np.prod(input_shape))
        rows = []
        for i, example in enumerate(examples):
            values = example.get(sig.IMAGES)
            expected = (
                f'expected feature "{sig.IMAGES}" as a float_list of {size} values (an image of '
                f"shape {list(input_shape)}, flattened)"
            )
            if values is None:
                raise invalid(f"Example {i} has features {sorted(example)}; {expected}.")
            if values.dtype != np.float32 or values.size != size:
                kind = "float_list" if values.dtype == np.float32 else f"{values.dtype} list"
                raise invalid(f"Example {i} has a {kind} of {values.size} values; {expected}.")
            rows.append(values.reshape(input_shape))
        return np.stack(rows)

    def metadata(self, target: Target, fields: Sequence[str] = (SIGNATURE_DEF,)) -> Metadata:
        """The version asked for, with its SignatureDefs and its card.

        `fields` are GetModelMetadata's `metadata_field`s (`METADATA_FIELDS`); asking for
        `model_card` of a version without one is NOT_FOUND.
        """
        if not fields:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field not in METADATA_FIELDS:
                raise invalid(
                    f"Metadata field {field} is not supported; expected one of "
                    f"{', '.join(METADATA_FIELDS)}."
                )
        with self.manager.servable(target.name, target.version, target.label) as servable:
            if MODEL_CARD in fields and servable.card is None:
                raise not_found(
                    f"Model {servable.name} version {servable.version} has no model card: its "
                    f"SavedModel has no assets.extra/{sig.CARD_FILE}; it is served from its "
                    "signatures alone."
                )
            return Metadata(servable.name, servable.version, servable.signature_defs, servable.card)

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        return self.manager.status(name, version)

    def reload(self, config: ModelServerConfig) -> None:
        """HandleReloadConfigRequest, unless the server turned it off."""
        if not self.allow_reload:
            raise ServingError(
                grpc.StatusCode.PERMISSION_DENIED,
                "HandleReloadConfigRequest is turned off on this server "
                "(--allow_reload_config_rpc=false).",
            )
        self.manager.reload_config(config)
