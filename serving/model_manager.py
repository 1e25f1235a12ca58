"""Keeps the served versions up to date: discovers, loads, swaps and unloads them.

A background poller lists each model's base folder every `--file_system_poll_wait_seconds`, applies
the version policy, loads new versions (`Servable.load` into a Session plus a warmup run: a
version is only AVAILABLE once both succeed) and unloads versions the policy no longer wants (their
Sessions closed once their requests are done). A version that fails
is END with its error and is left out of the policy, so it never replaces one that is serving; it
is retried only if its files change. Requests resolve against an immutable snapshot that is
swapped in one assignment, so they never see a half-updated map, and an unloading version waits
for the requests it is running. With `watch_config_file`, the model config file is re-read and
applied when it changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator, Mapping

import grpc
from absl import logging
from tensorflow_serving.apis import get_model_status_pb2

from serving import model_config
from serving.errors import ServingError, from_tf_error, invalid, not_found
from serving.metrics import WARMUP_LATENCY, ServingMetrics
from serving.model_config import ModelServerConfig, ModelSource
from serving.servable import Servable
from serving.validation import Limits

State = get_model_status_pb2.ModelVersionStatus.State


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """A version's state as GetModelStatus reports it."""

    version: int
    state: int
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


@dataclasses.dataclass(frozen=True)
class _Model:
    versions: Mapping[int, Servable]
    labels: Mapping[str, int]


def _load_error(error: Exception, name: str, version: int, path: str) -> ServingError:
    if isinstance(error, ServingError):
        code, detail = error.code, error.message
    else:
        converted = from_tf_error(error, "the load")
        code = converted.code if hasattr(error, "error_code") else grpc.StatusCode.UNKNOWN
        detail = converted.message.removeprefix("Running the load failed: ")
    return ServingError(
        code, f"Failed to load version {version} of model {name} at {path}: {detail}"
    )


class ModelManager:
    """Loads the models of a config (or of every folder of a zoo root) and serves their versions.

    Args:
        sources: list of ModelSource. The models to serve (ignored when `zoo_root` is given).
        limits: Limits. Applied to warmup requests as to any request.
        zoo_root: str or None. Serve every folder of this directory, rescanned at each poll.
        poll_seconds: float. Seconds between polls; 0 or less polls once, at `start`.
        allow_unavailable_labels: bool. Allow labels that point at versions not loaded.
        metrics: ServingMetrics or None. Records each load's outcome and latency, and warmups.
        base_path_roots: tuple of str. Folders every model's base path must lie in, at start
            and in every reload (`--model_base_path_roots`; empty: anywhere).
    """

    def __init__(
        self,
        sources: list[ModelSource],
        limits: Limits,
        *,
        zoo_root: str | None = None,
        poll_seconds: float = 1.0,
        allow_unavailable_labels: bool = False,
        metrics: ServingMetrics | None = None,
        base_path_roots: tuple[str, ...] = (),
    ):
        model_config.check_base_paths(list(sources), base_path_roots)
        if zoo_root is not None:
            model_config.check_base_paths([ModelSource("zoo", zoo_root)], base_path_roots)
        self._base_path_roots = tuple(base_path_roots)
        # Called with (name, version) after a version is unloaded (the adaptation cache drops
        # what it holds of that version).
        self.unload_listeners: list = []
        self._metrics = metrics
        self._sources, self._zoo_root, self._limits = list(sources), zoo_root, limits
        self._poll_seconds, self._allow_unavailable_labels = poll_seconds, allow_unavailable_labels
        self._lock = threading.RLock()  # serializes polls, reloads and stop
        self._servables: dict[str, dict[int, Servable]] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._failed: dict[tuple[str, int], tuple] = {}
        self._snapshot: Mapping[str, _Model] = {}
        self._status_lock = threading.Lock()
        self._status: dict[str, dict[int, VersionStatus]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchers: list[threading.Thread] = []

    # Lifecycle.

    def start(self) -> None:
        """Loads what is on disk now (blocking), applies labels, then starts the poller."""
        with self._lock:
            self._poll()
            self._apply_labels(self._current_sources(), strict=not self._allow_unavailable_labels)
        if self._poll_seconds > 0:
            self._thread = threading.Thread(target=self._run, name="model-poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stops polling and unloads every version (waiting for their requests)."""
        self._stop.set()
        for thread in [self._thread, *self._watchers]:
            if thread is not None:
                thread.join()
        with self._lock:
            servables = [s for versions in self._servables.values() for s in versions.values()]
            self._servables = {}
            self._publish()
            for servable in servables:
                self._unload(servable)

    def watch_config_file(self, path: str, seconds: float, applied: ModelServerConfig) -> None:
        """Re-reads the ModelServerConfig at `path` every `seconds` (`--model_config_file_poll_
        wait_seconds`) and serves exactly its models when it changes from `applied` (the config
        the manager started with), as a reload request would. A file that cannot be read or
        applied is logged and the models served stay as they are, as in TF Serving."""

        def watch():
            last = applied
            while not self._stop.wait(seconds):
                try:
                    config = model_config.read_config_file(path)
                    if config != last:
                        logging.info("Model config file %s changed; reloading it", path)
                        last = config
                        self.reload_config(config)
                except Exception as e:  # the watcher must survive anything
                    message = getattr(e, "message", str(e))
                    logging.error("Reloading the model config file %s failed: %s", path, message)

        self._watchers.append(threading.Thread(target=watch, name="config-poller", daemon=True))
        self._watchers[-1].start()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.poll()
            except Exception:  # the poller must survive anything
                logging.exception("Polling the model folders failed; retrying at the next poll.")

    # Requests.

    def model_names(self) -> list[str]:
        return sorted(self._snapshot)

    @contextlib.contextmanager
    def servable(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> Iterator[Servable]:
        """The version a request asks for, counted in flight while the block runs."""
        for _ in range(100):
            servable = self._resolve(self._snapshot, name, version, label)
            if servable.acquire():
                try:
                    yield servable
                finally:
                    servable.release()
                return
            # It is unloading: a newer snapshot is already published.
        raise ServingError(grpc.StatusCode.UNAVAILABLE, f"Model {name} is being reloaded; retry.")

    def _resolve(self, snapshot, name, version, label) -> Servable:
        model = snapshot.get(name)
        request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
        if model is None or (not model.versions and label is None):
            raise not_found(
                f"Servable not found for request: {request}. Models served: {sorted(snapshot)}."
            )
        if label is not None:
            if label not in model.labels:
                raise invalid(
                    f"Unrecognized servable version label: {label}. Labels of model {name}: "
                    f"{sorted(model.labels)}."
                )
            version = model.labels[label]
            request = f"Specific({name}, {version})"
        if version is None:
            return model.versions[max(model.versions)]
        if version not in model.versions:
            raise not_found(
                f"Servable not found for request: {request}. Versions available: "
                f"{sorted(model.versions)}."
            )
        return model.versions[version]

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Every version known for `name` (newest first), or the one asked for."""
        with self._status_lock:
            entries = dict(self._status.get(name, {}))
        if version is not None:
            if version not in entries:
                raise not_found(f"Could not find version {version} of model {name}")
            return [entries[version]]
        if not entries:
            raise not_found(f"Could not find any versions of model {name}")
        return [entries[v] for v in sorted(entries, reverse=True)]

    # Configuration.

    def reload_config(self, config: ModelServerConfig) -> None:
        """HandleReloadConfigRequest: serve exactly the models of `config` (blocks until loaded)."""
        if config.WhichOneof("config") is None:
            return
        if config.WhichOneof("config") != "model_config_list":
            raise invalid(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                "ModelConfigList is currently supported"
            )
        sources = model_config.sources_from_config(config)
        model_config.check_base_paths(sources, self._base_path_roots)
        with self._lock:
            before = set(self._servables)
            self._zoo_root, self._sources = None, sources
            self._poll()
            missing = [
                s for s in sources if s.name not in before and not self._servables.get(s.name)
            ]
            if missing:
                reasons = ", ".join(
                    f"{{{s.name} due to error: {self._why_unavailable(s)}}}" for s in missing
                )
                raise ServingError(
                    grpc.StatusCode.UNKNOWN,
                    f"{len(missing)} model(s) did not become available: {{{reasons}}}",
                )
            self._apply_labels(sources, strict=not self._allow_unavailable_labels)

    def _why_unavailable(self, source: ModelSource) -> str:
        with self._status_lock:
            errors = [s.error_message for s in self._status.get(source.name, {}).values()]
        errors = [e for e in errors if e]
        return "; ".join(errors) or f"no version folder under {source.base_path} fits its policy"

    def _apply_labels(self, sources: list[ModelSource], strict: bool) -> None:
        for source in sources:
            for label, version in sorted(source.labels.items()):
                available = self._servables.get(source.name, {})
                if strict and version not in available:
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {source.name}, "
                        f"which is not currently available for inference (label {label!r}; "
                        f"available versions: {sorted(available)}).",
                    )
        self._labels = {s.name: dict(s.labels) for s in sources}
        self._publish()

    def _current_sources(self) -> list[ModelSource]:
        if self._zoo_root is not None:
            return model_config.sources_from_config(model_config.zoo_config(self._zoo_root))
        return self._sources

    # Polling.

    def poll(self) -> None:
        """One pass over every model's folder: load, swap, unload."""
        with self._lock:
            self._poll()

    def _poll(self) -> None:
        sources = self._current_sources()
        for source in sources:
            if self._stop.is_set():
                return
            self._sync(source)
        names = {s.name for s in sources}
        for name in [n for n in self._servables if n not in names]:
            self._retire(name, list(self._servables[name]))
            del self._servables[name]
        self._publish()

    def _sync(self, source: ModelSource) -> None:
        on_disk = model_config.list_versions(source.base_path)
        for key in [k for k in self._failed if k[0] == source.name]:
            path = on_disk.get(key[1])
            if path is None or model_config.fingerprint(path) != self._failed[key]:
                del self._failed[key]  # gone or changed: may be retried

        def wanted() -> set[int]:
            usable = [v for v in on_disk if (source.name, v) not in self._failed]
            return model_config.select_versions(source.policy, usable)

        serving = self._servables.setdefault(source.name, {})
        # A failure changes what the policy wants (the failed version is left out): repeat
        # until every wanted version is loaded, and only then retire the others.
        while missing := sorted(wanted() - serving.keys(), reverse=True):
            if self._stop.is_set():
                return
            version = missing[0]
            servable = self._load(source.name, version, on_disk[version])
            if servable is not None:
                serving[version] = servable
                self._publish()
        self._retire(source.name, [v for v in serving if v not in wanted()])

    def _load(self, name: str, version: int, path: str) -> Servable | None:
        self._set_status(name, version, State.START)
        self._set_status(name, version, State.LOADING)
        logging.info("Loading version %d of model %s from %s", version, name, path)
        start, servable = time.monotonic(), None
        try:
            servable = Servable.load(name, version, path)
            loaded = time.monotonic()
            if self._metrics is not None:
                self._metrics.record_load(path, True, loaded - start)
            records = servable.warm_up(self._limits)
            servable.model_cost()  # built now, not by the first request
            if self._metrics is not None:
                self._metrics.observe(WARMUP_LATENCY, (time.monotonic() - loaded) * 1e6, path)
        except Exception as e:  # reported in GetModelStatus
            if servable is None and self._metrics is not None:
                self._metrics.record_load(path, False, 0.0)
            elif servable is not None:
                servable.close()
            error = _load_error(e, name, version, path)
            self._failed[(name, version)] = model_config.fingerprint(path)
            self._set_status(name, version, State.END, error.code, error.message)
            logging.error("%s", error.message)
            return None
        self._set_status(name, version, State.AVAILABLE)
        logging.info(
            "Version %d of model %s is available (%d warmup requests)", version, name, records
        )
        return servable

    def _retire(self, name: str, versions: list[int]) -> None:
        """Stops routing to `versions` (a new snapshot first), then unloads them."""
        if not versions:
            return
        servables = [self._servables[name].pop(v) for v in versions]
        self._publish()
        for servable in servables:
            self._unload(servable)

    def _unload(self, servable: Servable) -> None:
        self._set_status(servable.name, servable.version, State.UNLOADING)
        servable.retire()
        servable.close()
        for listener in self.unload_listeners:
            listener(servable.name, servable.version)
        self._set_status(servable.name, servable.version, State.END)
        logging.info("Unloaded version %d of model %s", servable.version, servable.name)

    def _publish(self) -> None:
        self._snapshot = {
            name: _Model(dict(versions), dict(self._labels.get(name, {})))
            for name, versions in self._servables.items()
        }

    def _set_status(self, name, version, state, code=grpc.StatusCode.OK, message="") -> None:
        with self._status_lock:
            self._status.setdefault(name, {})[version] = VersionStatus(
                version, state, code, message
            )
