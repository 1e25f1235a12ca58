"""TensorBoard scalars that every reader sees: the dashboard and `EventAccumulator.Scalars()`.

`tf.summary.scalar` writes tensor summaries, which TensorBoard's dashboard shows but
`EventAccumulator.Scalars()` (and other readers of the classic format) do not; a `Summary` proto
with `simple_value` is read by both.
"""

from __future__ import annotations

import tensorflow as tf


class ScalarWriter:
    """Writes scalars to one TensorBoard run folder (driver side, eager).

    Args:
        logdir: str. The event files' folder.
    """

    def __init__(self, logdir: str):
        self._writer = tf.summary.create_file_writer(logdir)

    def write(self, step: int, values: dict[str, float]) -> None:
        """One event of `tag -> value` at `step`."""
        summary = tf.compat.v1.Summary(
            value=[
                tf.compat.v1.Summary.Value(tag=tag, simple_value=float(value))
                for tag, value in values.items()
            ]
        )
        with self._writer.as_default():
            tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=int(step))
        self._writer.flush()
