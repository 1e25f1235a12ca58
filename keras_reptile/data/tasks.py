"""In-graph, stateless task sampling: a task is a pure function of a `[2]` integer seed.

Keying every task by `(run seed, global task index)` makes the sampled tasks independent of how the
meta-batch is split across replicas or workers, and makes a resumed run draw exactly the tasks an
uninterrupted run would have drawn: the step counter is the whole random state.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

from keras_reptile.data.base import ClassImages
from keras_reptile.task_kind import CLASSIFICATION, REGRESSION


class Task(NamedTuple):
    """Support set and queries; classification examples are ordered by class (label 0 first)."""

    support_x: tf.Tensor
    support_y: tf.Tensor
    query_x: tf.Tensor
    query_y: tf.Tensor


class ClassificationTasks:
    """N-way tasks drawn from in-memory class images.

    Args:
        split: ClassImages. The classes to draw from.

    Example:
    >>> from keras_reptile.data.base import ClassImages
    >>> from keras_reptile.data.streams import task_seeds
    >>> images = np.zeros([10, 4, 28, 28, 1], np.uint8)
    >>> tasks = ClassificationTasks(ClassImages(images, 1.0, [str(i) for i in range(10)]))
    >>> task = tasks.sample(task_seeds(0, [0])[0], ways=5, shots=2, queries=1)
    >>> task.support_x.shape, task.query_y.numpy().tolist()
    (TensorShape([10, 28, 28, 1]), [0, 1, 2, 3, 4])
    """

    task_kind = CLASSIFICATION

    def __init__(self, split: ClassImages):
        self.split = split
        with tf.device("CPU:0"):
            self._images = tf.constant(split.images)
        self._scale = float(split.scale)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.split.image_shape

    def check(self, ways: int, shots: int) -> None:
        """Raises `ValueError` if tasks of this size cannot be drawn from the split."""
        if ways > self.split.num_classes:
            raise ValueError(
                f"Cannot draw {ways}-way tasks from {self.split.num_classes} classes. "
                f"Received: classes={ways}"
            )
        if shots > self.split.images_per_class:
            raise ValueError(
                f"Cannot draw {shots} examples per class from {self.split.images_per_class} images "
                f"per class. Received: shots={shots}"
            )

    def sample(self, seed: tf.Tensor, ways: int, shots: int, queries: int = 0) -> Task:
        """`ways` random classes, `shots + queries` distinct random images of each."""
        per_class = shots + queries
        class_seed, image_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        num_classes, num_images = self.split.num_classes, self.split.images_per_class
        # Gather on the host that holds the images so only the task's images cross devices.
        with tf.device("CPU:0"):
            classes = tf.argsort(tf.random.stateless_uniform([num_classes], class_seed))[:ways]
            keys = tf.random.stateless_uniform([ways, num_images], image_seed)
            picks = tf.argsort(keys, axis=1)[:, :per_class]
            images = tf.gather(tf.gather(self._images, classes), picks, batch_dims=1)
        images = tf.cast(images, tf.float32) * self._scale
        labels = tf.broadcast_to(tf.range(ways, dtype=tf.int32)[:, None], [ways, per_class])

        def flat(t):
            return tf.reshape(t, [-1, *t.shape[2:]])

        return Task(
            flat(images[:, :shots]),
            flat(labels[:, :shots]),
            flat(images[:, shots:]),
            flat(labels[:, shots:]),
        )


class SineTasks:
    """Sine regression tasks: `y = amplitude * sin(x + phase)`.

    Args:
        amplitude: (low, high). Uniform range of the amplitude.
        phase: (low, high). Uniform range of the phase.
        x_range: (low, high). Uniform range of the inputs.
    """

    task_kind = REGRESSION
    input_shape = (1,)

    def __init__(self, amplitude=(0.1, 5.0), phase=(0.0, math.pi), x_range=(-5.0, 5.0)):
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range

    def check(self, ways: int, shots: int) -> None:
        if ways != 1:
            raise ValueError(f"Sine tasks have a single output. Received: classes={ways}")

    def sample(self, seed: tf.Tensor, ways: int, shots: int, queries: int = 0) -> Task:
        """`shots` support points and `queries` query points of one random sine."""
        amplitude, phase = self.parameters(seed)
        x_seed = tf.random.experimental.stateless_split(seed, 2)[1]
        x = tf.random.stateless_uniform(
            [shots + queries, 1], x_seed, minval=self.x_range[0], maxval=self.x_range[1]
        )
        y = amplitude * tf.sin(x + phase)
        return Task(x[:shots], y[:shots], x[shots:], y[shots:])

    def parameters(self, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The amplitude and phase of the task with stateless seed `seed`."""
        param_seed = tf.random.experimental.stateless_split(seed, 2)[0]
        u = tf.random.stateless_uniform([2], param_seed)
        amplitude = self.amplitude[0] + u[0] * (self.amplitude[1] - self.amplitude[0])
        phase = self.phase[0] + u[1] * (self.phase[1] - self.phase[0])
        return amplitude, phase
