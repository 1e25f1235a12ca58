from concurrent import futures

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from keras_reptile.export import signatures as sig
from serving.service import Service
from serving.tls import server_credentials
from serving.validation import Limits
from tests.serving import in_process
from tests.serving.helpers import WAYS, export, install, outputs, predict_request, task
from tests.serving.tls_helpers import make_pki


def quote(pem: str) -> str:
    return '"' + pem.replace("\n", "\\n") + '"'


def ssl_config(tmp_path, server, ca=None, client_verify=False) -> str:
    text = f"server_key: {quote(server.key)}\nserver_cert: {quote(server.cert)}\n"
    if ca:
        text += f"custom_ca: {quote(ca)}\n"
    if client_verify:
        text += "client_verify: true\n"
    path = tmp_path / "ssl.config"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def pki():
    return make_pki()


def serve(credentials):
    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port("localhost:0", credentials)
    server.start()
    return server, port


def check(port, credentials) -> grpc.StatusCode:
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()


def test_tls_serves_clients_that_trust_the_ca(tmp_path, pki):
    ca, server_pair, _ = pki
    server, port = serve(server_credentials(ssl_config(tmp_path, server_pair)))
    try:
        assert check(port, grpc.ssl_channel_credentials(ca.encode())) == grpc.StatusCode.OK
        # A client that does not trust the server's CA cannot connect.
        _, other, _ = make_pki()
        untrusting = grpc.ssl_channel_credentials(other.cert.encode())
        assert check(port, untrusting) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)


def test_mutual_tls_requires_a_client_certificate_signed_by_custom_ca(tmp_path, pki):
    ca, server_pair, client = pki
    config = ssl_config(tmp_path, server_pair, ca=ca, client_verify=True)
    server, port = serve(server_credentials(config))
    try:
        with_cert = grpc.ssl_channel_credentials(
            ca.encode(), client.key.encode(), client.cert.encode()
        )
        assert check(port, with_cert) == grpc.StatusCode.OK
        assert check(port, grpc.ssl_channel_credentials(ca.encode())) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)


def test_bad_ssl_configs_are_refused_with_what_is_wrong(tmp_path, pki):
    ca, server_pair, _ = pki
    path = tmp_path / "ssl.config"
    path.write_text('server_key: "key.pem"\nserver_cert: "cert.pem"\n')
    with pytest.raises(ValueError, match="PEM text.*not a file name"):
        server_credentials(str(path))
    path.write_text(f"server_cert: {quote(server_pair.cert)}\n")
    with pytest.raises(ValueError, match="needs server_key and server_cert"):
        server_credentials(str(path))
    with pytest.raises(ValueError, match="client_verify needs custom_ca"):
        server_credentials(ssl_config(tmp_path, server_pair, client_verify=True))
    path.write_text("server_pem: 1\n")
    with pytest.raises(ValueError, match='no field named "server_pem"'):
        server_credentials(str(path))


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "omni"
    install(export("omni", 1), base, 1)
    manager = in_process.manager("omni", base, Limits())
    yield manager
    manager.stop()


def _predict(target: str, credentials) -> np.ndarray:
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(target, credentials, options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_request("omni", sig.ADAPT_AND_PREDICT, task())
        return outputs(stub.Predict(request, timeout=30))[sig.CLASSES]


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual_tls"])
def test_predict_round_trips_over_the_servers_tls(tmp_path, pki, manager, mutual):
    ca, server_pair, client = pki
    config = ssl_config(tmp_path, server_pair, ca=ca if mutual else None, client_verify=mutual)
    service = Service(manager, Limits())
    with in_process.serve(service, server_credentials(config)) as running:
        key_pair = (client.key.encode(), client.cert.encode()) if mutual else (None, None)
        trusted = grpc.ssl_channel_credentials(ca.encode(), *key_pair)
        assert _predict(running.grpc_target, trusted).shape == (WAYS,)
        with grpc.insecure_channel(running.grpc_target) as plain:  # no TLS: no answer
            with pytest.raises(grpc.RpcError) as e:
                prediction_service_pb2_grpc.PredictionServiceStub(plain).Predict(
                    predict_request("omni", "", {sig.IMAGES: task()[sig.QUERY_IMAGES]}),
                    timeout=5,
                )
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        if mutual:  # without a client certificate: refused
            with pytest.raises(grpc.RpcError) as e:
                _predict(running.grpc_target, grpc.ssl_channel_credentials(ca.encode()))
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
