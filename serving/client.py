"""Client library and CLI: send a few-shot task to the server (or to tensorflow_model_server).

PNG images are prepared exactly as training images are: Omniglot-shaped models (28x28x1) get
`keras_reptile.data.omniglot.to_28x28_bits` (0/1, 1 for the background), RGB models get the
Mini-ImageNet reader's bilinear resize scaled to [0, 1]. `.npz` files hold arrays named after
the signature's inputs. Every call carries a deadline.

Example:
    python -m serving.client --target localhost:8500 --model omniglot_5w1s \
        --support task/support/*/*.png --query task/query/*.png
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
from google.protobuf import json_format
from PIL import Image
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from keras_reptile.data.miniimagenet import _read_rgb
from keras_reptile.data.omniglot import IMAGE_SIZE, to_28x28_bits
from keras_reptile.export import signatures as sig

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
    request.model_spec.name, request.model_spec.signature_name = model, signature_name
    if version is not None:
        request.model_spec.version.value = version
    elif label is not None:
        request.model_spec.version_label = label
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
                    meta["metadata"]["signature_def"], signature_map, ignore_unknown_fields=True
                )
            else:
                request = get_model_metadata_pb2.GetModelMetadataRequest(
                    metadata_field=["signature_def"]
                )
                request.model_spec.name = model
                if version is not None:
                    request.model_spec.version.value = version
                response = self._call(self._stub.GetModelMetadata, request)
                response.metadata["signature_def"].Unpack(signature_map)
            if signature_name not in signature_map.signature_def:
                raise ClientError(
                    "NOT_FOUND",
                    f"Model {model} has no signature {signature_name}; it has "
                    f"{sorted(signature_map.signature_def)}.",
                )
            self._signatures[key] = signature_map.signature_def[signature_name]
        return self._signatures[key]

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
        learning_rate: float | None = None,
        transductive: bool | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Fine-tunes on (support, targets) server-side and predicts the queries.

        `targets` are class indices for classifiers, values `[S, 1]` for regression models;
        options left as None take the model's defaults.
        """
        keys = self.signature_inputs(model, sig.ADAPT_AND_PREDICT, version)
        if sig.SUPPORT_IMAGES in keys:
            inputs = {sig.SUPPORT_IMAGES: support, sig.SUPPORT_LABELS: targets}
            inputs[sig.QUERY_IMAGES] = queries
        else:
            targets = np.asarray(targets).reshape(-1, 1)
            inputs = {sig.SUPPORT_INPUTS: support, sig.SUPPORT_TARGETS: targets}
            inputs[sig.QUERY_INPUTS] = queries
        options = {
            sig.INNER_STEPS: inner_steps,
            sig.LEARNING_RATE: learning_rate,
            sig.TRANSDUCTIVE: transductive,
        }
        inputs.update({k: v for k, v in options.items() if v is not None})
        return self.predict(model, inputs, sig.ADAPT_AND_PREDICT, version=version, label=label)


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


def load_image(path: str, input_shape: Sequence[int]) -> np.ndarray:
    """A PNG prepared exactly as the training images of a model with `input_shape`."""
    input_shape = tuple(input_shape)
    if input_shape == (IMAGE_SIZE, IMAGE_SIZE, 1):
        with Image.open(path) as image:
            return to_28x28_bits(image).astype(np.float32)[..., None]
    if len(input_shape) == 3 and input_shape[2] == 3 and input_shape[0] == input_shape[1]:
        rgb = _read_rgb(pathlib.Path(path), input_shape[0])
        return rgb.astype(np.float32) * np.float32(1 / 255)
    raise ValueError(
        f"PNG input fits Omniglot-shaped (28, 28, 1) and square RGB (N, N, 3) models; this model "
        f"takes {input_shape}. Send .npz arrays instead. Received: {path}"
    )


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
    parser.add_argument("--support", nargs="+", required=True, help="PNGs, folders or one .npz")
    parser.add_argument("--query", nargs="+", default=[], help="PNGs, folders or one .npz")
    parser.add_argument("--version", type=int)
    parser.add_argument("--label", help="version label")
    parser.add_argument("--inner_steps", type=int)
    parser.add_argument("--learning_rate", type=float)
    parser.add_argument("--transductive", action="store_true", default=None)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="deadline, s")
    parser.add_argument("--rest", action="store_true", help="use the REST API")
    return parser


def _task(args, client: Client) -> tuple[dict, list[str], list[str] | None]:
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
        raise ValueError(f"No queries: pass --query, or an .npz holding {query_key}.")
    count = len(arrays[query_key])
    query_names = query_names or [f"query[{i}]" for i in range(count)]
    return arrays, query_names, class_names


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with Client(args.target, rest=args.rest, timeout=args.timeout) as client:
            arrays, query_names, class_names = _task(args, client)
            options = {
                sig.INNER_STEPS: args.inner_steps,
                sig.LEARNING_RATE: args.learning_rate,
                sig.TRANSDUCTIVE: args.transductive,
            }
            arrays.update({k: v for k, v in options.items() if v is not None})
            outputs = client.predict(
                args.model, arrays, sig.ADAPT_AND_PREDICT, version=args.version, label=args.label
            )
    except (ClientError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if sig.CLASSES in outputs:
        for name, cls, probs in zip(query_names, outputs[sig.CLASSES], outputs[sig.PROBABILITIES]):
            label = f" {class_names[cls]!r}" if class_names and cls < len(class_names) else ""
            print(f"{name}: class {int(cls)}{label} (p={float(probs[cls]):.3f})")
    else:
        for name, value in zip(query_names, outputs[sig.PREDICTIONS]):
            print(f"{name}: {np.asarray(value).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
