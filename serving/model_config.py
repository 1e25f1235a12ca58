"""Which models to serve: ModelServerConfig parsing, version discovery and version policies.

A model is a base folder holding integer version folders (`<base_path>/<version>/saved_model.pb`),
as TensorFlow Serving expects. Other names (such as the exporter's hidden `.export-*` folders) are
ignored. Policies are those of `FileSystemStoragePathSourceConfig.ServableVersionPolicy`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping

import grpc
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import ServingError, invalid

ModelServerConfig = model_server_config_pb2.ModelServerConfig


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """One model to serve.

    Args:
        name: str. The model name clients ask for.
        base_path: str. Absolute folder of the integer version folders.
        policy: tuple. `("latest", n)`, `("all",)` or `("specific", frozenset_of_versions)`.
        labels: mapping str -> int. Version labels (`version_labels` in the config).
    """

    name: str
    base_path: str
    policy: tuple = ("latest", 1)
    labels: Mapping[str, int] = dataclasses.field(default_factory=dict)


def read_config_file(path: str) -> ModelServerConfig:
    """Parses a text-format ModelServerConfig file (`--model_config_file`)."""
    try:
        with open(path) as f:
            return text_format.Parse(f.read(), ModelServerConfig())
    except (OSError, text_format.ParseError) as e:
        raise ValueError(
            f"Could not read the model config file (a text-format ModelServerConfig). "
            f"Received: model_config_file={path}: {e}"
        ) from None


def config_from_flags(model_name: str, model_base_path: str) -> ModelServerConfig:
    """The one-model config that `--model_name` and `--model_base_path` describe."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = model_name, model_base_path, "tensorflow"
    return config


def zoo_config(root: str) -> ModelServerConfig:
    """Every non-hidden folder of `root` as a model named after the folder."""
    config = ModelServerConfig()
    config.model_config_list.SetInParent()
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            if not name.startswith(".") and os.path.isdir(os.path.join(root, name)):
                model = config.model_config_list.config.add()
                model.name, model.base_path = name, os.path.join(root, name)
                model.model_platform = "tensorflow"
    return config


def _policy(model) -> tuple:
    policy = model.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return ("all",)
    if kind == "specific":
        if not policy.specific.versions:
            raise invalid(f"Model {model.name} has a specific version policy listing no versions.")
        return ("specific", frozenset(int(v) for v in policy.specific.versions))
    return ("latest", max(int(policy.latest.num_versions), 1) if kind == "latest" else 1)


def sources_from_config(config: ModelServerConfig) -> list[ModelSource]:
    """Checks a ModelServerConfig and returns its models (relative base paths are made absolute)."""
    kind = config.WhichOneof("config")
    if kind is None:
        return []
    if kind != "model_config_list":
        raise invalid(
            "ServerModelConfig type not supported. Only ModelConfigList is currently supported; "
            f"received {kind}."
        )
    sources, seen = [], set()
    for model in config.model_config_list.config:
        if not model.name:
            raise invalid(
                f"A model config has no name; received: {text_format.MessageToString(model)!r}"
            )
        if model.name in seen:
            raise invalid(f"Illegal to list model {model.name} multiple times in config list")
        if not model.base_path:
            raise invalid(
                f"Model {model.name} has no base_path; expected the folder of its versions."
            )
        if model.model_platform not in ("", "tensorflow"):
            raise invalid(
                f"Model {model.name} has model_platform {model.model_platform!r}; this server "
                "serves only 'tensorflow' SavedModels."
            )
        seen.add(model.name)
        sources.append(
            ModelSource(
                name=model.name,
                base_path=os.path.abspath(model.base_path),
                policy=_policy(model),
                labels={k: int(v) for k, v in model.version_labels.items()},
            )
        )
    return sources


def list_versions(base_path: str) -> dict[int, str]:
    """Integer version -> folder, for the version folders under `base_path` (none if absent)."""
    try:
        names = os.listdir(base_path)
    except OSError:
        return {}
    return {
        int(name): os.path.join(base_path, name)
        for name in names
        if name.isdigit() and os.path.isdir(os.path.join(base_path, name))
    }


def select_versions(policy: tuple, versions: Iterable[int]) -> set[int]:
    """The versions a policy asks to serve, out of those on disk."""
    versions = sorted(set(versions))
    if policy[0] == "all":
        return set(versions)
    if policy[0] == "specific":
        return set(versions) & set(policy[1])
    return set(versions[-policy[1] :])


def fingerprint(path: str) -> tuple:
    """Changes when a version folder's SavedModel files change (to retry a failed load)."""
    stats = []
    for name in ("", "saved_model.pb", "variables/variables.index"):
        try:
            st = os.stat(os.path.join(path, name))
            stats.append((name, st.st_mtime_ns, st.st_size))
        except OSError:
            stats.append((name, None, None))
    return tuple(stats)


def check_base_paths(sources: list[ModelSource], roots: tuple[str, ...]) -> None:
    """Refuses a model whose base path (symbolic links resolved) lies outside every one of
    `roots` (`--model_base_path_roots`); no roots: any path."""
    if not roots:
        return
    real_roots = [os.path.realpath(r) for r in roots]
    for source in sources:
        path = os.path.realpath(source.base_path)
        if not any(os.path.commonpath([path, r]) == r for r in real_roots):
            raise ServingError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Model {source.name}'s base path {source.base_path} is outside the folders "
                f"this server may load from (--model_base_path_roots={','.join(roots)}).",
            )
