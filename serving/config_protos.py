"""TensorFlow Serving's `MonitoringConfig` and `SSLConfig` text protos, read as it reads them.

The `tensorflow-serving-api` package ships neither message, so both are declared here with
TensorFlow Serving's package, names and field numbers, and parsed with protobuf's own
`text_format`: a file that `tensorflow_model_server` accepts is accepted here, and a misspelled
field is refused with protobuf's message.
"""

from __future__ import annotations

import dataclasses

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

_PACKAGE = "tensorflow.serving"
_FIELDS = {
    # message: [(field, number, type)]; types from descriptor_pb2.FieldDescriptorProto.
    "PrometheusConfig": [("enable", 1, "TYPE_BOOL"), ("path", 2, "TYPE_STRING")],
    "MonitoringConfig": [("prometheus_config", 1, "PrometheusConfig")],
    "SSLConfig": [
        ("server_key", 1, "TYPE_STRING"),
        ("server_cert", 2, "TYPE_STRING"),
        ("custom_ca", 3, "TYPE_STRING"),
        ("client_verify", 4, "TYPE_BOOL"),
    ],
}


def _message_classes() -> dict[str, type]:
    proto = descriptor_pb2.FileDescriptorProto(
        name="keras_reptile_serving_config.proto", package=_PACKAGE, syntax="proto3"
    )
    for message, fields in _FIELDS.items():
        desc = proto.message_type.add(name=message)
        for name, number, kind in fields:
            field = desc.field.add(
                name=name, number=number, label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
            )
            if kind.startswith("TYPE_"):
                field.type = getattr(descriptor_pb2.FieldDescriptorProto, kind)
            else:
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                field.type_name = f".{_PACKAGE}.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {
        m: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{m}"))
        for m in _FIELDS
    }


_CLASSES = _message_classes()


def parse_text_proto(path: str, message: str):
    """Reads the text proto `message` (a name in `_FIELDS`) from `path`; `ValueError` naming the
    file and protobuf's complaint."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"Cannot read the {message} file: {e}. Received: path={path!r}") from None
    try:
        return text_format.Parse(text, _CLASSES[message]())
    except text_format.ParseError as e:
        raise ValueError(
            f"Not a valid {message} text proto: {e}. Received: path={path!r}"
        ) from None


@dataclasses.dataclass(frozen=True)
class Monitoring:
    """What `--monitoring_config_file` turns on: Prometheus metrics at `path` on the REST port."""

    prometheus: bool = False
    path: str = "/monitoring/prometheus/metrics"

    @classmethod
    def read(cls, path: str | None) -> Monitoring:
        if not path:
            return cls()
        config = parse_text_proto(path, "MonitoringConfig").prometheus_config
        metrics_path = config.path or cls.path
        if not metrics_path.startswith("/"):
            raise ValueError(
                f"prometheus_config.path must start with '/'. Received: path={config.path!r}"
            )
        return cls(prometheus=config.enable, path=metrics_path)
