"""Named seed streams: each purpose that draws tasks gets its own, independent sequence of tasks.

A task is a pure function of a stateless seed `[stream key, task index]`. The key of a stream is a
hash of the run's seed, the stream's name and an optional part (such as the split evaluated), so
streams never overlap and adding one never shifts another.
"""

from __future__ import annotations

import enum
import hashlib

import tensorflow as tf


class Stream(enum.StrEnum):
    META_TRAIN = "meta_train"  # the tasks of meta-training, indexed by global task number
    EVALUATION = "evaluation"  # the final evaluation (part: the split)
    PERIODIC_EVALUATION = "periodic_evaluation"  # evaluations during training (part: the split)
    PLOT = "plot"  # the task drawn in the sine figure
    INITIALIZATION = "initialization"  # a replicate's initial weights (part: the replicate)


def stream_key(seed: int, stream: Stream, part: str = "") -> int:
    """The non-negative int64 key of `stream` (and `part` of it) in the run seeded by `seed`."""
    text = f"{int(seed)}/{Stream(stream).value}/{part}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def replicate_part(replicate: int) -> str:
    """The stream part of a training replicate: empty for replicate 0, the paper's run."""
    return f"replicate/{int(replicate)}" if replicate else ""


def meta_train_key(seed: int, replicate: int = 0) -> int:
    """The key of the meta-training tasks of `replicate` of the run seeded by `seed`."""
    return stream_key(seed, Stream.META_TRAIN, replicate_part(replicate))


def initialization_seed(seed: int, replicate: int = 0) -> int:
    """The Keras seed of the initial weights: `seed` itself for replicate 0."""
    if not replicate:
        return int(seed)
    return stream_key(seed, Stream.INITIALIZATION, replicate_part(replicate)) % 2**31


def task_seeds(key: int, indices) -> tf.Tensor:
    """Stateless seeds `[N, 2]` of tasks `indices` of the stream with key `key`."""
    indices = tf.cast(indices, tf.int64)
    return tf.stack([tf.fill(tf.shape(indices), tf.constant(key, tf.int64)), indices], axis=1)
