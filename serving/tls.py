"""gRPC TLS and mutual TLS from TensorFlow Serving's `--ssl_config_file` (an `SSLConfig` proto).

As in `tensorflow_model_server`, `server_key` and `server_cert` hold PEM text (not paths),
`custom_ca` the PEM of the certificate authority that signs client certificates, and
`client_verify` requires every client to present one.
"""

from __future__ import annotations

import grpc

from serving.config_protos import parse_text_proto


def server_credentials(path: str) -> grpc.ServerCredentials:
    """The gRPC server credentials `path` describes; `ValueError` naming what is missing."""
    config = parse_text_proto(path, "SSLConfig")
    if not config.server_key or not config.server_cert:
        raise ValueError(
            f"An SSLConfig needs server_key and server_cert (PEM text). Received: path={path!r}"
        )
    for name in ("server_key", "server_cert", "custom_ca"):
        value = getattr(config, name)
        if value and "-----BEGIN" not in value:
            raise ValueError(
                f"SSLConfig.{name} holds PEM text, as in TensorFlow Serving, not a file name. "
                f"Received: {name}={value[:60]!r}"
            )
    if config.client_verify and not config.custom_ca:
        raise ValueError(
            "client_verify needs custom_ca, the authority that signs client certificates. "
            f"Received: path={path!r}"
        )
    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=config.custom_ca.encode() if config.custom_ca else None,
        require_client_auth=config.client_verify,
    )
