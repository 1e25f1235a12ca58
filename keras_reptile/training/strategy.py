"""One function maps a strategy name to a `tf.distribute.Strategy` and rejects bad combinations."""

from __future__ import annotations

import tensorflow as tf

from keras_reptile.config import STRATEGIES


def make_strategy(name: str) -> tf.distribute.Strategy:
    """Returns the strategy called `name` (one of `STRATEGIES`).

    `mirrored` uses every local GPU, or every (logical) CPU device when there is no GPU, and reduces
    on the host. `multi_worker_mirrored` reads the cluster from `TF_CONFIG`.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(
            cpus, cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    if name == "multi_worker_mirrored":
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise ValueError(f"Unknown strategy. Expected one of {STRATEGIES}. Received: strategy={name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files (the only one, or the chief worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
    )


def tasks_per_replica(strategy: tf.distribute.Strategy, meta_batch: int) -> int:
    """Splits the meta-batch evenly across replicas; raises if it does not divide."""
    replicas = strategy.num_replicas_in_sync
    if meta_batch % replicas:
        raise ValueError(
            f"`meta_batch` must be a multiple of the {replicas} replicas in sync so every replica "
            f"trains the same number of tasks. Received: meta_batch={meta_batch}"
        )
    return meta_batch // replicas


def use_cpu_devices(count: int) -> None:
    """Splits the host CPU into `count` logical devices (call before TensorFlow runs anything)."""
    if count < 1:
        raise ValueError(f"`cpu_devices` must be at least 1. Received: cpu_devices={count}")
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )


def set_threads(intra_op: int | None, inter_op: int | None) -> None:
    """Sizes TensorFlow's thread pools (None or 0 keeps its default; call before it runs anything).

    One intra-op thread per kernel and two inter-op threads let the fast path's independent
    task groups run on separate cores, which beats splitting each small kernel across cores.
    """
    for name, value, setter in (
        ("intra_op_threads", intra_op, tf.config.threading.set_intra_op_parallelism_threads),
        ("inter_op_threads", inter_op, tf.config.threading.set_inter_op_parallelism_threads),
    ):
        if value is not None and value < 0:
            raise ValueError(
                f"`{name}` must be >= 0 (0 = TensorFlow's default). Received: {name}={value}"
            )
        if value:
            setter(value)
