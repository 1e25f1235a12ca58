"""Client library and CLI: send a few-shot task to the server (or to tensorflow_model_server).

PNG images are prepared exactly as training images are, by
`keras_reptile.data.preprocessing.load_image`: Omniglot-shaped models (28x28x1) get 0/1 bits (1
for the background), RGB and other gray models the readers' bilinear resize scaled to [0, 1].
`.npz` files hold arrays named after the signature's inputs. Every call carries a deadline.
`Client.model_card` (and `--show_card`) reads a version's model card, an extension of this server
that tensorflow_model_server does not have.

Example:
    python -m serving.client --target localhost:8500 --model omniglot_5w1s \
        --support task/support/*/*.png --query task/query/*.png
    python -m serving.client --target localhost:8500 --model omniglot_5w1s --show_card
Each support PNG's class is its folder's name; classes are numbered in sorted name order.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format, wrappers_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from keras_reptile.data.preprocessing import load_image
from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import ModelCard
from keras_reptile.task_kind import by_inputs
from serving.service import MODEL_CARD, SIGNATURE_DEF

DEFAULT_TIMEOUT = 30.0
_PNG = (".png",)


def rest_model_url(
    base_url: str, model: str, version: int | None = None, label: str | None = None
) -> str:
    """TF Serving's REST path of a model, a version of it, or a labelled version."""
    url = f"{base_url}/v1/models/{model}"
    if version is not None:
        url += f"/versions/{version}"
    elif label is not None:
        url += f"/labels/{label}"
    return url


def set_model_spec(
    model_spec, model: str, version: int | None = None, label: str | None = None
) -> None:
    """Fills a `ModelSpec`: `version` wins over `label`; with neither, the latest version."""
    model_spec.name = model
    if version is not None:
        model_spec.version.value = version
    elif label is not None:
        model_spec.version_label = label


def predict_request(
    model: str,
    signature_name: str,
    inputs: dict,
    version: int | None = None,
    label: str | None = None,
) -> predict_pb2.PredictRequest:
    """A `PredictRequest` for `model`'s signature with numpy-convertible `inputs`.

    `version` wins over `label`; with neither, the server picks the latest version.
    """
    request = predict_pb2.PredictRequest()
    set_model_spec(request.model_spec, model, version, label)
    request.model_spec.signature_name = signature_name
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    return request


class ClientError(Exception):
    """A request the server refused: `code` is the gRPC status name or the HTTP status."""

    def __init__(self, code, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class Client:
    """Talks to one server over gRPC (default) or REST.

    Args:
        target: str. `host:port` of the gRPC port (or of the REST port with `rest=True`).
        rest: bool. Use the REST API instead of gRPC.
        timeout: float. Deadline of each call, in seconds.
    """

    def __init__(self, target: str, *, rest: bool = False, timeout: float = DEFAULT_TIMEOUT):
        self.target, self.rest, self.timeout = target, rest, timeout
        self._signatures: dict = {}
        if not rest:
            self._channel = grpc.insecure_channel(
                target, options=[("grpc.max_send_message_length", -1)]
            )
            self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self) -> None:
        if not self.rest:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _model_path(self, model: str, version: int | None, label: str | None) -> str:
        return rest_model_url(f"http://{self.target}", model, version, label)

    def _http(self, url: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, data), timeout=self.timeout
            ) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", e.reason)
            except ValueError:
                message = e.reason
            raise ClientError(e.code, message) from None

    def signature(
        self, model: str, signature_name: str = sig.ADAPT_AND_PREDICT, version: int | None = None
    ) -> meta_graph_pb2.SignatureDef:
        """A signature's SignatureDef, from the model's metadata (asked once, then cached)."""
        key = (model, signature_name, version)
        if key not in self._signatures:
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            if self.rest:
                meta = self._http(self._model_path(model, version, None) + "/metadata")
                json_format.ParseDict(
                    meta["metadata"][SIGNATURE_DEF], signature_map, ignore_unknown_fields=True
                )
            else:
                response = self._metadata(model, SIGNATURE_DEF, version, None)
                response.metadata[SIGNATURE_DEF].Unpack(signature_map)
            if signature_name not in signature_map.signature_def:
                raise ClientError(
                    "NOT_FOUND",
                    f"Model {model} has no signature {signature_name}; it has "
                    f"{sorted(signature_map.signature_def)}.",
                )
            self._signatures[key] = signature_map.signature_def[signature_name]
        return self._signatures[key]

    def _metadata(
        self, model: str, field: str, version: int | None, label: str | None
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[field])
        set_model_spec(request.model_spec, model, version, label)
        return self._call(self._stub.GetModelMetadata, request)

    def model_card(
        self, model: str, version: int | None = None, label: str | None = None
    ) -> ModelCard:
        """The model card of a version (the latest, a number, or a label).

        Raises ClientError NOT_FOUND (HTTP 404) if the version has none, ValueError if the
        server's card is not a model card this package reads.
        """
        if self.rest:
            card = self._http(self._model_path(model, version, label) + "/" + MODEL_CARD)
            return ModelCard.from_json(json.dumps(card))
        text = wrappers_pb2.StringValue()
        self._metadata(model, MODEL_CARD, version, label).metadata[MODEL_CARD].Unpack(text)
        return ModelCard.from_json(text.value)

    def signature_inputs(
        self, model: str, signature_name: str = sig.ADAPT_AND_PREDICT, version: int | None = None
    ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Input key -> (shape with -1 for a free dimension, numpy dtype) of a signature."""
        return {
            k: (tuple(d.size for d in v.tensor_shape.dim), tf.as_dtype(v.dtype).as_numpy_dtype)
            for k, v in self.signature(model, signature_name, version).inputs.items()
        }

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise ClientError(e.code().name, e.details()) from None

    def predict(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        signature_name: str = sig.SERVING_DEFAULT,
        *,
        version: int | None = None,
        label: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Runs a signature on named arrays, converted to the signature's dtypes (`convert`)."""
        dtypes = {k: v[1] for k, v in self.signature_inputs(model, signature_name, version).items()}
        inputs = {k: convert(v, dtypes[k], k) if k in dtypes else v for k, v in inputs.items()}
        if self.rest:
            body = {
                "signature_name": signature_name,
                "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()},
            }
            out = self._http(self._model_path(model, version, label) + ":predict", body)["outputs"]
            if not isinstance(out, dict):  # a signature with one output answers its value
                (name,) = self.signature(model, signature_name, version).outputs
                out = {name: out}
            return {k: np.asarray(v) for k, v in out.items()}
        request = predict_request(model, signature_name, inputs, version, label)
        response = self._call(self._stub.Predict, request)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def adapt_and_predict(
        self,
        model: str,
        support: np.ndarray,
        targets: np.ndarray,
        queries: np.ndarray,
        *,
        inner_steps: int | None = None,
        inner_batch_size: int | None = None,
        learning_rate: float | None = None,
        transductive: bool | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Fine-tunes on (support, targets) server-side and predicts the queries.

        `targets` are class indices for classifiers, values `[S, 1]` for regression models;
        options left as None take the model's defaults.
        """
        kind = by_inputs(self.signature_inputs(model, sig.ADAPT_AND_PREDICT, version))
        keys = kind.keys
        targets = np.asarray(targets).reshape(-1, *kind.target_shape)
        inputs = {keys.support: support, keys.targets: targets, keys.query: queries}
        inputs.update(adapt_options(inner_steps, inner_batch_size, learning_rate, transductive))
        return self.predict(model, inputs, sig.ADAPT_AND_PREDICT, version=version, label=label)

    def version_of(self, model: str, label: str | None = None) -> int:
        """The version number the server answers for `model` (its latest, or `label`'s)."""
        if self.rest:
            meta = self._http(self._model_path(model, None, label) + "/metadata")
            return int(meta["model_spec"]["version"])
        return int(self._metadata(model, SIGNATURE_DEF, None, label).model_spec.version.value)

    def adapt(
        self,
        model: str,
        support: np.ndarray,
        targets: np.ndarray,
        *,
        inner_steps: int | None = None,
        inner_batch_size: int | None = None,
        learning_rate: float | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> AdaptedTask:
        """Adapts server-side once (the `adapt` signature); the returned task's `predict`
        answers queries from its weights (`predict_adapted`) without adapting again.

        The task is pinned to the version that adapted it: its weights mean nothing to another.
        """
        version = version if version is not None else self.version_of(model, label)
        keys = self.signature_inputs(model, sig.ADAPT, version)
        if sig.SUPPORT_IMAGES in keys:
            inputs = {sig.SUPPORT_IMAGES: support, sig.SUPPORT_LABELS: targets}
        else:
            targets = np.asarray(targets).reshape(-1, 1)
            inputs = {sig.SUPPORT_INPUTS: support, sig.SUPPORT_TARGETS: targets}
        inputs.update(adapt_options(inner_steps, inner_batch_size, learning_rate))
        weights = self.predict(model, inputs, sig.ADAPT, version=version)[sig.ADAPTED_WEIGHTS]
        images = inputs.get(sig.SUPPORT_IMAGES)
        return AdaptedTask(self, model, version, weights, images)


class AdaptedTask:
    """A task adapted once by `Client.adapt`: its weights (and, for a classifier, the support
    images the non-transductive answer batches each query with), pinned to one version."""

    def __init__(self, client: Client, model: str, version: int, weights, support_images=None):
        self.client, self.model, self.version = client, model, version
        self.weights, self.support_images = np.asarray(weights), support_images

    def predict(self, queries: np.ndarray, *, transductive: bool | None = None) -> dict:
        """The adapted model's answers for `queries`, as `adapt_and_predict` gives them."""
        inputs = {sig.ADAPTED_WEIGHTS: self.weights}
        if self.support_images is not None:
            inputs[sig.SUPPORT_IMAGES] = self.support_images
            inputs[sig.QUERY_IMAGES] = queries
            inputs.update(adapt_options(transductive=transductive))
        else:
            inputs[sig.QUERY_INPUTS] = queries
        return self.client.predict(self.model, inputs, sig.PREDICT_ADAPTED, version=self.version)

    def save(self, path: str, class_names: Sequence[str] | None = None) -> None:
        """Writes the enrollment to an .npz file (`AdaptedTask.load` reads it back)."""
        arrays = {
            "model": np.asarray(self.model),
            "version": np.asarray(self.version),
            sig.ADAPTED_WEIGHTS: self.weights,
            "class_names": np.asarray(list(class_names or []), dtype=str),
        }
        if self.support_images is not None:
            arrays[sig.SUPPORT_IMAGES] = np.asarray(self.support_images, np.float32)
        np.savez(path, **arrays)

    @classmethod
    def load(cls, client: Client, path: str) -> tuple[AdaptedTask, list[str]]:
        """An enrollment written by `save`, and its class names."""
        try:
            with np.load(path) as data:
                task = cls(
                    client,
                    str(data["model"]),
                    int(data["version"]),
                    data[sig.ADAPTED_WEIGHTS],
                    data[sig.SUPPORT_IMAGES] if sig.SUPPORT_IMAGES in data.files else None,
                )
                names = [str(n) for n in data["class_names"]]
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(
                f"Not an enrollment written by --save_enrollment ({e}). Received: path={path}"
            ) from None
        return task, names


def adapt_options(
    inner_steps: int | None = None,
    inner_batch_size: int | None = None,
    learning_rate: float | None = None,
    transductive: bool | None = None,
) -> dict:
    """The optional inputs of the adapt signatures that are not None (None: the model's default)."""
    given = {
        sig.INNER_STEPS: inner_steps,
        sig.INNER_BATCH_SIZE: inner_batch_size,
        sig.LEARNING_RATE: learning_rate,
        sig.TRANSDUCTIVE: transductive,
    }
    return {k: v for k, v in given.items() if v is not None}


def convert(value, dtype, key: str) -> np.ndarray:
    """`value` as `dtype` when nothing but float precision is lost; ValueError otherwise."""
    array, dtype = np.asarray(value), np.dtype(dtype)
    if array.dtype == dtype:
        return array
    kind = array.dtype.kind
    ok = (
        (dtype.kind == "f" and kind in "iuf")
        or (dtype.kind in "iu" and kind in "iu")
        or (dtype.kind == "b" and kind == "b")
    )
    if ok and dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        ok = info.min <= array.min() and array.max() <= info.max
    if not ok:
        raise ValueError(
            f'Input "{key}" holds {array.dtype} values that are not valid {dtype}: the signature '
            f"expects {dtype}."
        )
    return array.astype(dtype)


# Files.


def _pngs(folder: str) -> list[str]:
    found = [str(p) for p in sorted(pathlib.Path(folder).rglob("*")) if p.suffix.lower() in _PNG]
    if not found:
        raise ValueError(f"No PNG files under {folder}.")
    return found


def support_files(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """Support PNGs and their class names (each file's folder name); folders are expanded."""
    files = []
    for path in paths:
        files.extend(_pngs(path) if os.path.isdir(path) else [path])
    return files, [os.path.basename(os.path.dirname(os.path.abspath(f))) for f in files]


def query_files(paths: Sequence[str]) -> list[str]:
    files = []
    for path in paths:
        files.extend(_pngs(path) if os.path.isdir(path) else [path])
    return files


def load_npz(path: str, signature_inputs: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, whose keys must be inputs of the signature (their dtypes are
    converted by `Client.predict`)."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    unknown = sorted(set(arrays) - set(signature_inputs))
    if unknown:
        raise ValueError(
            f"{path} holds arrays {unknown} that are not inputs of the signature; expected keys "
            f"among {sorted(signature_inputs)}."
        )
    return arrays


# CLI.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.client", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--target", required=True, help="host:port of the gRPC (or REST) port")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument(
        "--support", nargs="+", help="PNGs, folders or one .npz (required unless --show_card)"
    )
    parser.add_argument("--query", nargs="+", default=[], help="PNGs, folders or one .npz")
    parser.add_argument(
        "--show_card", action="store_true", help="print the version's model card and exit"
    )
    parser.add_argument("--version", type=int)
    parser.add_argument("--label", help="version label")
    parser.add_argument("--inner_steps", type=int)
    parser.add_argument("--inner_batch_size", type=int)
    parser.add_argument("--learning_rate", type=float)
    parser.add_argument("--transductive", action="store_true", default=None)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="deadline, s")
    parser.add_argument("--rest", action="store_true", help="use the REST API")
    parser.add_argument(
        "--save_enrollment",
        metavar="PATH.npz",
        help="adapt to --support once (the adapt signature) and save the adapted task here",
    )
    parser.add_argument(
        "--enrollment",
        metavar="PATH.npz",
        help="classify --query with a saved enrollment (predict_adapted): no adaptation",
    )
    return parser


def _task(
    args, client: Client, queries_needed: bool = True
) -> tuple[dict, list[str], list[str] | None]:
    """The request's arrays, the query names, and the class names (None for .npz labels)."""
    inputs = client.signature_inputs(args.model, sig.ADAPT_AND_PREDICT, args.version)
    arrays, class_names, query_names = {}, None, []
    if len(args.support) == 1 and args.support[0].endswith(".npz"):
        arrays.update(load_npz(args.support[0], inputs))
    else:
        files, names = support_files(args.support)
        shape = inputs[sig.SUPPORT_IMAGES][0][1:] if sig.SUPPORT_IMAGES in inputs else ()
        class_names = sorted(set(names))
        arrays[sig.SUPPORT_IMAGES] = np.stack([load_image(f, shape) for f in files])
        arrays[sig.SUPPORT_LABELS] = np.asarray([class_names.index(n) for n in names], np.int32)
    if len(args.query) == 1 and args.query[0].endswith(".npz"):
        arrays.update(load_npz(args.query[0], inputs))
    elif args.query:
        files = query_files(args.query)
        shape = inputs[sig.QUERY_IMAGES][0][1:] if sig.QUERY_IMAGES in inputs else ()
        arrays[sig.QUERY_IMAGES] = np.stack([load_image(f, shape) for f in files])
        query_names = files
    query_key = sig.QUERY_IMAGES if sig.QUERY_IMAGES in inputs else sig.QUERY_INPUTS
    if query_key not in arrays:
        if not queries_needed:
            return arrays, [], class_names
        raise ValueError(f"No queries: pass --query, or an .npz holding {query_key}.")
    count = len(arrays[query_key])
    query_names = query_names or [f"query[{i}]" for i in range(count)]
    return arrays, query_names, class_names


def card_summary(card: ModelCard) -> str:
    """A few lines on a model card: name, ways, meta-iterations, results, default protocol."""
    p = card.default_protocol
    answer = _answer(card, p)
    lines = [
        f"name: {card.name}",
        f"ways: {card.ways} ({card.task_kind.name})",
        f"meta-iterations: {card.meta_iterations}",
        "results:" if card.results else "results: none measured",
        *(f"  {m}" for m in card.results),
        f"default protocol: {p.shots}-shot, {p.eval_iters} inner steps of batch {p.eval_batch} "
        f"at learning rate {p.learning_rate}{answer}",
    ]
    asked = []
    for m in card.results:
        flags = protocol_flags(p, m.protocol)
        line = f"  {m.protocol.shots}-shot{_answer(card, m.protocol)}: {flags or '(the defaults)'}"
        if line not in asked:
            asked.append(line)
    if asked:
        lines += ["to ask for a measured protocol (this client's flags):", *asked]
    return "\n".join(lines)


def _answer(card: ModelCard, protocol) -> str:
    if not card.task_kind.transductive_option:
        return ""
    return ", transductive" if protocol.transductive else ", non-transductive"


def protocol_flags(default, protocol) -> str:
    """The client flags that turn the served defaults (`default`) into `protocol`'s adaptation;
    the shots are the support set the client sends."""
    flags = []
    if protocol.eval_iters != default.eval_iters:
        flags.append(f"--inner_steps={protocol.eval_iters}")
    if protocol.eval_batch != default.eval_batch:
        flags.append(f"--inner_batch_size={protocol.eval_batch}")
    if protocol.learning_rate != default.learning_rate:
        flags.append(f"--learning_rate={protocol.learning_rate}")
    if protocol.transductive and not default.transductive:
        flags.append("--transductive")
    return " ".join(flags)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not (args.show_card or args.support or args.enrollment):
        parser.error("--support is required (unless --show_card or --enrollment)")
    if args.enrollment and args.support:
        parser.error("--enrollment replaces --support: pass one of them")
    try:
        with Client(args.target, rest=args.rest, timeout=args.timeout) as client:
            if args.show_card:
                print(card_summary(client.model_card(args.model, args.version, args.label)))
                return 0
            if args.save_enrollment or args.enrollment:
                return _enrolled(args, client)
            arrays, query_names, class_names = _task(args, client)
            arrays.update(
                adapt_options(
                    args.inner_steps, args.inner_batch_size, args.learning_rate, args.transductive
                )
            )
            outputs = client.predict(
                args.model, arrays, sig.ADAPT_AND_PREDICT, version=args.version, label=args.label
            )
    except (ClientError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _print_answers(outputs, query_names, class_names)
    return 0


def _enrolled(args, client: Client) -> int:
    """--save_enrollment: adapt once and save; --enrollment: answer queries from a saved one."""
    if args.save_enrollment:
        arrays, _, class_names = _task(args, client, queries_needed=False)
        targets = arrays.get(sig.SUPPORT_LABELS, arrays.get(sig.SUPPORT_TARGETS))
        support = arrays.get(sig.SUPPORT_IMAGES, arrays.get(sig.SUPPORT_INPUTS))
        task = client.adapt(
            args.model, support, targets, inner_steps=args.inner_steps,
            inner_batch_size=args.inner_batch_size, learning_rate=args.learning_rate,
            version=args.version, label=args.label,
        )  # fmt: skip
        task.save(args.save_enrollment, class_names)
        print(f"enrolled {len(support)} examples with {args.model} version {task.version}: "
              f"{args.save_enrollment}")  # fmt: skip
    else:
        task, class_names = AdaptedTask.load(client, args.enrollment)
        if task.model != args.model:
            raise ValueError(
                f"{args.enrollment} was adapted by model {task.model!r}. "
                f"Received: --model={args.model}"
            )
    if args.query:
        inputs = client.signature_inputs(args.model, sig.PREDICT_ADAPTED, task.version)
        key = sig.QUERY_IMAGES if sig.QUERY_IMAGES in inputs else sig.QUERY_INPUTS
        if len(args.query) == 1 and args.query[0].endswith(".npz"):
            queries = load_npz(args.query[0], inputs)[key]
            names = [f"query[{i}]" for i in range(len(queries))]
        else:
            names = query_files(args.query)
            queries = np.stack([load_image(f, inputs[key][0][1:]) for f in names])
        outputs = task.predict(queries, transductive=args.transductive)
        _print_answers(outputs, names, class_names or None)
    return 0


def _print_answers(outputs, query_names, class_names) -> None:
    if sig.CLASSES in outputs:
        for name, cls, probs in zip(query_names, outputs[sig.CLASSES], outputs[sig.PROBABILITIES]):
            label = f" {class_names[cls]!r}" if class_names and cls < len(class_names) else ""
            print(f"{name}: class {int(cls)}{label} (p={float(probs[cls]):.3f})")
    else:
        for name, value in zip(query_names, outputs[sig.PREDICTIONS]):
            print(f"{name}: {np.asarray(value).tolist()}")


if __name__ == "__main__":
    sys.exit(main())
