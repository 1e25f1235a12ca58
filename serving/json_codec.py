"""TensorFlow Serving's REST JSON: request bodies to arrays, outputs to response bodies.

Requests come in the row format (`"instances"`: one item per example, named objects when the
signature has several inputs) or the columnar format (`"inputs"`: a value, or an object of named
values). Values are converted to the signature's dtype only when that loses nothing: JSON integers
are accepted for float inputs (as TF Serving does), but a fraction is never accepted for an
integer input, nor a string or a boolean for a number.

Shapes are checked before any value is converted: each input's shape is read from the lengths of
its first nested lists and checked against the signature and the server's limits (tasks,
examples, bytes), so a body with too many rows or too large a tensor is refused before arrays are
built; a list whose other elements differ is found ragged when converted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from keras_reptile.export import signatures as sig
from serving import validation
from serving.errors import invalid

_JSON_KIND = {"b": "Bool", "i": "Integer", "u": "Integer", "f": "Number", "U": "String"}


def parse(data: bytes):
    """The JSON value of a request body (INVALID_ARGUMENT if it is not JSON or nests too deep)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise invalid("JSON Parse error: the body nests arrays or objects too deeply.") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"JSON Parse error: {e}") from None


def nested_shape(value) -> tuple[int, ...]:
    """The shape of a nested list, read along its first elements (a ragged one is caught when
    converted)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _check_before_decoding(
    spec: sig.SignatureSpec, input_spec: sig.InputSpec, shape: tuple[int, ...], limits
) -> None:
    if 0 not in shape:  # an empty one is cheap to convert, and refused with its shape after
        validation.check_shape(spec, input_spec, shape, limits)
    validation.check_decoded_size(input_spec.key, shape, input_spec.dtype, limits)


def signature_name_of(body) -> str:
    if not isinstance(body, dict):
        raise invalid(
            f"The JSON body must be an object with 'instances' or 'inputs'; received "
            f"{type(body).__name__}."
        )
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid("'signature_name' key must be a string value.")
    return name


def to_array(value, dtype: tf.DType, key: str) -> np.ndarray:
    """A JSON value (number or rectangular nested list) as an array of `dtype`, never lossy."""
    try:
        array = np.asarray(value)
    except ValueError:
        raise invalid(
            f'Input "{key}" is a ragged nested list; expected a rectangular nested list of '
            f"{dtype.name}."
        ) from None
    if array.size == 0 and array.dtype.kind == "f":
        return np.zeros(array.shape, dtype.as_numpy_dtype)
    kind = array.dtype.kind
    ok = (
        (dtype.is_floating and kind in "iuf")
        or (dtype.is_integer and kind in "iu")
        or (dtype == tf.bool and kind == "b")
    )
    if not ok:
        found = _JSON_KIND.get(kind, "a mix of types or objects")
        first = array.flat[0] if array.size else None
        try:
            example = json.dumps(first.item() if hasattr(first, "item") else first)
        except (TypeError, ValueError):
            example = "?"
        raise invalid(
            f"JSON Value: {example} Type: {found} is not of expected type: {dtype.name} "
            f'(input "{key}"). Values are never cast: send {dtype.name} values.'
        )
    if dtype.is_integer:
        info = np.iinfo(dtype.as_numpy_dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise invalid(f'Input "{key}" has values outside the range of {dtype.name}.')
    with np.errstate(over="ignore"):
        return array.astype(dtype.as_numpy_dtype)


def _rows(instances, spec: sig.SignatureSpec, limits: validation.Limits) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise invalid(f"'instances' must be a list; received {type(instances).__name__}.")
    if not instances:
        raise invalid("No values in 'instances' array")
    most = max(limits.max_support, limits.max_queries, limits.max_tasks)
    if len(instances) > most:
        raise invalid(
            f"'instances' holds {len(instances)} rows; the server accepts at most {most} "
            "(--max_support, --max_queries, --max_tasks)."
        )
    if all(isinstance(item, dict) for item in instances):
        keys = set(instances[0])
        for i, item in enumerate(instances):
            if set(item) != keys:
                raise invalid(
                    f"Failed to process element: {i} of 'instances' list. JSON object: keys "
                    f"{sorted(item)} must be those of element 0: {sorted(keys)}."
                )
        validation.check_input_names(spec, keys)
        named = {k: [item[k] for item in instances] for k in keys}
    elif len(spec.inputs) == 1:
        named = {spec.inputs[0].key: instances}
    else:
        raise invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            f"required as per tensorinfo_map: {sorted(i.key for i in spec.inputs)}."
        )
    arrays = {}
    for key, values in named.items():
        input_spec = spec.input(key)
        if input_spec.shape == ():
            raise invalid(
                f'Input "{key}" is a scalar, which the row ("instances") format cannot carry '
                f'(each row value gets a batch dimension); send it in the columnar ("inputs") '
                f"format or leave it out to use its default."
            )
        _check_before_decoding(spec, input_spec, (len(values), *nested_shape(values[0])), limits)
        items = [to_array(v, input_spec.dtype, key) for v in values]
        for i, item in enumerate(items):
            if item.shape != items[0].shape:
                raise invalid(
                    f"Failed to process element: {i} of 'instances' list. Expecting shape "
                    f'{list(items[0].shape)} but got: {list(item.shape)} (input "{key}").'
                )
        arrays[key] = np.stack(items)
    return arrays


def _empty_shape(shape: tuple[int, ...], expected) -> tuple[int, ...]:
    """JSON's [] has no inner dimensions: they are taken from the contract (0 for a free one)."""
    if expected and len(shape) < len(expected) and shape[-1:] == (0,):
        return shape + tuple(d or 0 for d in expected[len(shape) :])
    return shape


def _column(value, spec: sig.SignatureSpec, input_spec: sig.InputSpec, limits) -> np.ndarray:
    shape = _empty_shape(nested_shape(value), input_spec.shape)
    _check_before_decoding(spec, input_spec, shape, limits)
    array = to_array(value, input_spec.dtype, input_spec.key)
    if array.size == 0:
        array = array.reshape(_empty_shape(array.shape, input_spec.shape))
    return array


def _columns(inputs, spec: sig.SignatureSpec, limits) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict):
        validation.check_input_names(spec, inputs)
        return {k: _column(v, spec, spec.input(k), limits) for k, v in inputs.items()}
    if len(spec.inputs) != 1:
        raise invalid(
            f"'inputs' is a plain value, but signature \"{spec.name}\" has several inputs: send "
            f"an object of named inputs {sorted(i.key for i in spec.inputs)}."
        )
    return {spec.inputs[0].key: _column(inputs, spec, spec.inputs[0], limits)}


def decode_predict(
    body: Mapping, spec: sig.SignatureSpec, limits: validation.Limits
) -> tuple[dict[str, np.ndarray], bool]:
    """The arrays of a predict body and whether it used the row format; each input's shape is
    checked against `spec` and `limits` before its values are converted."""
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows and has_columns:
        raise invalid(
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"
        )
    if not (has_rows or has_columns):
        raise invalid("Missing 'inputs' or 'instances' key")
    if has_rows:
        return _rows(body["instances"], spec, limits), True
    return _columns(body["inputs"], spec, limits), False


def encode_predict(outputs: Mapping[str, np.ndarray], row_format: bool) -> dict:
    """`{"predictions": [...]}` for row requests, `{"outputs": ...}` for columnar ones."""
    if not row_format:
        if len(outputs) == 1:
            return {"outputs": next(iter(outputs.values())).tolist()}
        return {"outputs": {k: v.tolist() for k, v in outputs.items()}}
    sizes = {k: (v.shape[0] if v.ndim else None) for k, v in outputs.items()}
    if None in sizes.values() or len(set(sizes.values())) > 1:
        raise invalid(f"Tensor outputs have inconsistent batch sizes {sizes} for the row format.")
    if len(outputs) == 1:
        return {"predictions": next(iter(outputs.values())).tolist()}
    rows = next(iter(sizes.values()))
    return {"predictions": [{k: v[i].tolist() for k, v in outputs.items()} for i in range(rows)]}


def decode_examples(body: Mapping, limits: validation.Limits) -> list[dict[str, np.ndarray]]:
    """Classify's `"examples"` (and optional `"context"`) as feature -> float32 values; their
    count and sizes are checked against `limits` first."""
    examples = body.get("examples")
    if not isinstance(examples, list):
        raise invalid("Missing 'examples' key: expected a list of objects of named features.")
    if len(examples) > limits.max_queries:
        raise invalid(
            f"'examples' holds {len(examples)} examples; the server accepts at most "
            f"{limits.max_queries} (--max_queries)."
        )
    context = body.get("context", {})
    rows = []
    for i, example in enumerate(examples):
        if not isinstance(example, dict) or not isinstance(context, dict):
            raise invalid(f"Example {i} is not a JSON object of named features.")
        merged = {**context, **example}
        for key, value in merged.items():
            validation.check_decoded_size(key, nested_shape(value), tf.float32, limits)
        rows.append({k: to_array(v, tf.float32, k).reshape(-1) for k, v in merged.items()})
    return rows


def encode_classify(scores: np.ndarray) -> dict:
    """`{"results": [[[label, score], ...], ...]}` with labels "0".."ways-1"."""
    return {"results": [[[str(j), float(p)] for j, p in enumerate(row)] for row in scores]}
