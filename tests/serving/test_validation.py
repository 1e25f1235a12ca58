"""Request checks, REST JSON conversion, error cleaning and model configs, without a server."""

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from keras_reptile.export import signatures as sig
from keras_reptile.task_kind import CLASSIFICATION, REGRESSION
from serving import json_codec, model_config, validation
from serving.client import convert
from serving.errors import ServingError, clean_tf_message

SPECS = sig.signature_specs((28, 28, 1), CLASSIFICATION)
ADAPT = SPECS[sig.ADAPT_AND_PREDICT]
TASKS = SPECS[sig.ADAPT_AND_PREDICT_TASKS]
LIMITS = validation.Limits(
    max_support=40, max_queries=20, max_inner_steps=50, max_message_bytes=2**20
)
INFO = validation.ModelInfo(ways=5, input_shape=(28, 28, 1), task_kind=CLASSIFICATION)


def _task():
    return {
        sig.SUPPORT_IMAGES: np.zeros((10, 28, 28, 1), np.float32),
        sig.SUPPORT_LABELS: np.repeat(np.arange(5, dtype=np.int32), 2),
        sig.QUERY_IMAGES: np.zeros((3, 28, 28, 1), np.float32),
    }


def _error(fn, *args, **kwargs) -> ServingError:
    with pytest.raises(ServingError) as e:
        fn(*args, **kwargs)
    return e.value


def test_protos_are_decoded_after_their_headers_pass():
    protos = {k: tf.make_tensor_proto(v) for k, v in _task().items()}
    arrays = validation.arrays_from_protos(ADAPT, protos, LIMITS)
    assert arrays[sig.SUPPORT_LABELS].dtype == np.int32 and arrays[sig.QUERY_IMAGES].shape == (
        3,
        28,
        28,
        1,
    )


def test_a_short_proto_may_not_expand_past_the_message_limit():
    spec = sig.SignatureSpec("generic", (sig.InputSpec("x", tf.float32, None),), ("y",))
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(dim=[{"size": 10**9}]))
    error = _error(validation.arrays_from_protos, spec, {"x": proto}, LIMITS)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "4000000000 bytes" in error.message


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda p: setattr(p, "tensor_content", p.tensor_content[:-4]),
            "tensor parsing error: query_images",
        ),
        (
            lambda p: p.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(unknown_rank=True)),
            "unknown rank",
        ),
        (lambda p: setattr(p, "dtype", 0), "no valid dtype"),
        (lambda p: setattr(p, "dtype", types_pb2.DT_HALF), "to be float but half is provided"),
    ],
)
def test_malformed_protos_are_invalid_arguments(mutate, message):
    protos = {k: tf.make_tensor_proto(v) for k, v in _task().items()}
    mutate(protos[sig.QUERY_IMAGES])
    error = _error(validation.arrays_from_protos, ADAPT, protos, LIMITS)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and message in error.message


def test_defaulted_values_are_named_as_defaults():
    arrays = dict(_task(), inner_steps=np.int32(60))
    error = _error(
        validation.check_values, ADAPT, arrays, INFO, LIMITS, defaulted=[sig.INNER_STEPS]
    )
    assert "received 60 (the signature's default)" in error.message


def test_regression_tasks_name_the_count_that_differs():
    specs = sig.signature_specs((1,), REGRESSION)
    arrays = {
        sig.SUPPORT_INPUTS: np.zeros((2, 3, 1), np.float32),
        sig.SUPPORT_TARGETS: np.zeros((2, 4, 1), np.float32),
        sig.QUERY_INPUTS: np.zeros((2, 5, 1), np.float32),
    }
    info = validation.ModelInfo(1, (1,), REGRESSION)
    error = _error(
        validation.check_values, specs[sig.ADAPT_AND_PREDICT_TASKS], arrays, info, LIMITS
    )
    assert error.message == (
        'Input "support_inputs" has 3 examples per task but "support_targets" has 4; expected '
        "one label or target per support example."
    )
    arrays[sig.SUPPORT_TARGETS] = np.zeros((1, 3, 1), np.float32)
    error = _error(
        validation.check_values, specs[sig.ADAPT_AND_PREDICT_TASKS], arrays, info, LIMITS
    )
    assert error.message == (
        'Input "support_inputs" holds 2 tasks but "support_targets" holds 1; expected the same '
        "number of tasks in both."
    )


def test_adapted_weights_must_have_the_model_s_length_and_task_count():
    specs = sig.signature_specs((1,), REGRESSION, num_weights=7)
    predict = specs[sig.PREDICT_ADAPTED_TASKS]
    protos = {
        sig.ADAPTED_WEIGHTS: tf.make_tensor_proto(np.zeros((2, 6), np.float32)),
        sig.QUERY_INPUTS: tf.make_tensor_proto(np.zeros((2, 5, 1), np.float32)),
    }
    error = _error(validation.arrays_from_protos, predict, protos, LIMITS)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == (
        'Input "adapted_weights" of signature "predict_adapted_tasks" has shape [2, 6]; expected '
        "[?, 7] (?: any size): each task's 7 adapted weights, as this version's \"adapt\" "
        "signature returns them."
    )
    arrays = {
        sig.ADAPTED_WEIGHTS: np.zeros((3, 7), np.float32),
        sig.QUERY_INPUTS: np.zeros((2, 5, 1), np.float32),
    }
    info = validation.ModelInfo(1, (1,), REGRESSION)
    error = _error(validation.check_values, predict, arrays, info, LIMITS)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == (
        'Input "adapted_weights" holds 3 tasks but "query_inputs" holds 2; expected the same '
        "number of tasks in both."
    )
    classifier = sig.signature_specs((28, 28, 1), CLASSIFICATION, num_weights=7)
    arrays = {
        sig.ADAPTED_WEIGHTS: np.zeros((2, 7), np.float32),
        sig.SUPPORT_IMAGES: np.zeros((1, 10, 28, 28, 1), np.float32),
        sig.QUERY_IMAGES: np.zeros((2, 3, 28, 28, 1), np.float32),
    }
    error = _error(
        validation.check_values, classifier[sig.PREDICT_ADAPTED_TASKS], arrays, INFO, LIMITS
    )
    assert error.message.startswith('Input "support_images" holds 1 tasks but "query_images"')
    arrays[sig.SUPPORT_IMAGES] = np.zeros((3, 10, 28, 28, 1), np.float32)
    arrays[sig.QUERY_IMAGES] = np.zeros((3, 3, 28, 28, 1), np.float32)
    error = _error(
        validation.check_values, classifier[sig.PREDICT_ADAPTED_TASKS], arrays, INFO, LIMITS
    )
    assert error.message.startswith('Input "support_images" holds 3 tasks but "adapted_weights"')
    arrays[sig.ADAPTED_WEIGHTS] = np.zeros((3, 7), np.float32)
    validation.check_values(classifier[sig.PREDICT_ADAPTED_TASKS], arrays, INFO, LIMITS)


def test_regression_labels_are_not_checked_as_classes():
    specs = sig.signature_specs((1,), REGRESSION)
    arrays = {
        sig.SUPPORT_INPUTS: np.zeros((3, 1), np.float32),
        sig.SUPPORT_TARGETS: np.full((3, 1), 7.0, np.float32),
        sig.QUERY_INPUTS: np.zeros((2, 1), np.float32),
    }
    info = validation.ModelInfo(1, (1,), REGRESSION)
    validation.check_values(specs[sig.ADAPT_AND_PREDICT], arrays, info, LIMITS)


@pytest.mark.parametrize(
    "value, dtype, expected",
    [
        ([1, 2], tf.float32, np.float32([1, 2])),
        ([[0.5]], tf.float32, np.float32([[0.5]])),
        (3, tf.int32, np.int32(3)),
        (True, tf.bool, np.bool_(True)),
        ([], tf.int32, np.zeros((0,), np.int32)),
    ],
)
def test_json_values_convert_without_loss(value, dtype, expected):
    array = json_codec.to_array(value, dtype, "x")
    assert array.dtype == expected.dtype
    np.testing.assert_array_equal(array, expected)


@pytest.mark.parametrize(
    "value, dtype, message",
    [
        ([1.5], tf.int32, "JSON Value: 1.5 Type: Number is not of expected type: int32"),
        ([True], tf.float32, "Type: Bool is not of expected type: float32"),
        ("a", tf.float32, "Type: String is not of expected type: float32"),
        (1, tf.bool, "Type: Integer is not of expected type: bool"),
        ([2**40], tf.int32, "outside the range of int32"),
        ([[1, 2], [3]], tf.float32, "ragged nested list"),
        ([{"a": 1}], tf.float32, "a mix of types or objects"),
    ],
)
def test_json_values_that_would_need_a_cast_are_refused(value, dtype, message):
    assert message in _error(json_codec.to_array, value, dtype, "x").message


def test_json_response_formats():
    outputs = {"a": np.float32([[1, 2], [3, 4]]), "b": np.int64([0, 1])}
    assert json_codec.encode_predict(outputs, row_format=True) == {
        "predictions": [{"a": [1.0, 2.0], "b": 0}, {"a": [3.0, 4.0], "b": 1}]
    }
    assert json_codec.encode_predict(outputs, row_format=False) == {
        "outputs": {"a": [[1.0, 2.0], [3.0, 4.0]], "b": [0, 1]}
    }
    assert json_codec.encode_predict({"a": np.float32([1])}, row_format=False) == {"outputs": [1.0]}


def test_empty_json_lists_keep_the_inner_dimensions():
    body = {
        "inputs": dict(
            {k: v.tolist() for k, v in _task().items()}, support_images=[], support_labels=[]
        )
    }
    arrays, row_format = json_codec.decode_predict(body, ADAPT, LIMITS)
    assert arrays[sig.SUPPORT_IMAGES].shape == (0, 28, 28, 1) and not row_format
    # With a task axis: no task at all, or tasks of no example (free dimensions read as 0).
    for value, shape in (([], (0, 0, 28, 28, 1)), ([[], []], (2, 0, 28, 28, 1))):
        keys = (sig.SUPPORT_IMAGES, sig.SUPPORT_LABELS, sig.QUERY_IMAGES)
        arrays, _ = json_codec.decode_predict({"inputs": dict.fromkeys(keys, value)}, TASKS, LIMITS)
        assert arrays[sig.SUPPORT_IMAGES].shape == arrays[sig.QUERY_IMAGES].shape == shape
        assert arrays[sig.SUPPORT_LABELS].shape == shape[:2]


def test_tf_errors_lose_their_graph_traces():
    message = (
        "Graph execution error:\n\nDetected at node assert_less/Assert/Assert defined at "
        "(most recent call last):\n<stack traces unavailable>\n"
        "assertion failed: [labels must be < 5] [x "
        "(support_labels:0) = ] [3 3 4...]\n\t [[{{node assert_less/Assert/Assert}}]] "
        "[Op:__inference_signature_wrapper_adapt_and_predict_7523]"
    )
    assert clean_tf_message(message) == "assertion failed: [labels must be < 5] [x = ] [3 3 4...]"


def test_tf_errors_keep_nested_values_but_lose_scoped_tensor_names():
    message = (
        "Graph execution error:\n\nDetected at node assert_less/Assert/Assert defined at "
        "(most recent call last):\n<stack traces unavailable>\n"
        "assertion failed: [labels must be < 5] [x (strided_slice_1:0) = ] [[3 3 4...]...] "
        "[y (assert_less/y:0) = ] [5]\n\t [[{{function_node __inference_fn_1}}{{node "
        "assert_less/Assert/Assert}}]] [Op:__inference_signature_wrapper_fn_2]"
    )
    assert clean_tf_message(message) == (
        "assertion failed: [labels must be < 5] [x = ] [[3 3 4...]...] [y = ] [5]"
    )


CONFIG = """
model_config_list {
  config { name: "a" base_path: "/models/a" model_version_policy { latest { num_versions: 2 } } }
  config {
    name: "b" base_path: "rel/b" model_version_policy { all {} }
    version_labels { key: "s" value: 3 }
  }
  config {
    name: "c" base_path: "/models/c"
    model_version_policy { specific { versions: 1 versions: 4 } }
  }
  config { name: "d" base_path: "/models/d" }
}
"""


def test_model_config_file_and_version_policies(tmp_path):
    path = tmp_path / "models.config"
    path.write_text(CONFIG)
    sources = model_config.sources_from_config(model_config.read_config_file(str(path)))
    assert [(s.name, s.policy) for s in sources] == [
        ("a", ("latest", 2)),
        ("b", ("all",)),
        ("c", ("specific", frozenset({1, 4}))),
        ("d", ("latest", 1)),
    ]
    assert sources[1].base_path.endswith("/rel/b") and sources[1].labels == {"s": 3}
    versions = [1, 2, 3, 4, 5]
    assert [model_config.select_versions(s.policy, versions) for s in sources] == [
        {4, 5},
        {1, 2, 3, 4, 5},
        {1, 4},
        {5},
    ]
    path.write_text("model_config_list { nope: 1 }")
    with pytest.raises(ValueError, match="Could not read the model config file"):
        model_config.read_config_file(str(path))


@pytest.mark.parametrize(
    "text, message",
    [
        (
            'model_config_list { config { name: "a" base_path: "/a" } '
            'config { name: "a" base_path: "/b" } }',
            "Illegal to list model a multiple times",
        ),
        ('model_config_list { config { name: "a" } }', "Model a has no base_path"),
        (
            'model_config_list { config { name: "a" base_path: "/a" model_platform: "pytorch" } }',
            "serves only 'tensorflow'",
        ),
        ('model_config_list { config { base_path: "/a" } }', "has no name"),
    ],
)
def test_bad_model_configs(text, message):
    from google.protobuf import text_format

    config = text_format.Parse(text, model_config.ModelServerConfig())
    assert message in _error(model_config.sources_from_config, config).message


def test_zoo_and_version_folders_ignore_other_names(tmp_path):
    for folder in ("m/1", "m/12", "m/.export-x", "m/latest", ".hidden/1", "n"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "m" / "3").write_text("a file, not a folder")
    assert sorted(model_config.list_versions(str(tmp_path / "m"))) == [1, 12]
    names = [c.name for c in model_config.zoo_config(str(tmp_path)).model_config_list.config]
    assert names == ["m", "n"]


def test_convert_refuses_lossy_conversions():
    assert convert(np.int64([1, 2]), np.int32, "k").dtype == np.int32
    assert convert([0, 1], np.float32, "k").dtype == np.float32
    for value, dtype in (([0.5], np.int32), ([2**40], np.int32), ([1.0], np.bool_)):
        with pytest.raises(ValueError, match='Input "k" holds'):
            convert(value, dtype, "k")
