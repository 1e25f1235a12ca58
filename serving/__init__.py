"""A TensorFlow Serving-compatible server that fine-tunes on the support set, and its client.

`python -m serving.server` speaks TensorFlow Serving's gRPC and REST APIs over the SavedModels that
`keras_reptile.export` writes (`serving_default`, `adapt_and_predict`, and
`adapt_and_predict_tasks` for several tasks in one request); `python -m serving.client` sends a
few-shot task to it. Beyond TF Serving, each version's model card is served: REST
`GET /v1/models/<name>/model_card`, gRPC `GetModelMetadata` with `metadata_field: "model_card"`.
Modules:

- `errors`: `ServingError` (a TF Serving status code and a message) and the code -> HTTP mapping.
- `validation`: checks a request's tensors (task axis included) against
  `keras_reptile.export.signatures`.
- `servable`: one loaded version in a TF1 Session (signatures run with their request's deadline as
  timeout, defaults, model card, warmup, in-flight count).
- `cancellation`: a request's deadline and its client's cancellation.
- `model_config`: ModelServerConfig parsing, version discovery and version policies.
- `model_manager`: loads, swaps and unloads versions in a background poller.
- `service`: the protocol-independent operations (predict, classify, metadata and model card,
  status).
- `grpc_service`, `rest`, `json_codec`: the gRPC servicers and the REST API.
- `server`: the `tensorflow_model_server`-style entry point; `launcher`: runs it as a subprocess.
- `client`: the client library and CLI (`Client.model_card`, `--show_card`).
"""
