"""The paper's Figure 1 for sine regression: the fit before and after k adaptation steps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_reptile.algorithms import Settings, adapt_and_predict  # noqa: E402
from keras_reptile.data.streams import task_seeds  # noqa: E402


def plot_sine_adaptation(model, optimizer, panels: dict, tasks, protocol, *, key: int, path: str):
    """Plots one new sine task: true curve, support points, predictions after 0, 1 and k steps.

    Args:
        model: StackedModel.
        optimizer: InnerOptimizer.
        panels: dict title -> (weights, optimizer state); one subplot each (meta-learned, random).
        tasks: SineTasks.
        protocol: Protocol. Shots, steps (k), batch size and learning rate.
        key: int. The seed stream the task is drawn from.
        path: str. Where the PNG goes; returned.
    """
    seeds = task_seeds(key, [0])
    sample_seed, batch_seed = tf.unstack(tf.random.experimental.stateless_split(seeds[0], 2))
    task = tasks.sample(sample_seed, 1, protocol.shots, 0)
    amplitude, phase = (float(t) for t in tasks.parameters(sample_seed))
    grid = np.linspace(*tasks.x_range, 200, dtype=np.float32)[:, None]
    steps = protocol.eval_iters
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), sharey=True)
    for ax, (title, (weights, state)) in zip(np.atleast_1d(axes), panels.items()):
        ax.plot(grid, amplitude * np.sin(grid + phase), "k-", lw=2, label="true")
        for k, style in ((0, ":"), (1, "--"), (steps, "-")):
            (outputs,) = adapt_and_predict(
                model,
                optimizer,
                weights,
                state,
                task.support_x[None],
                task.support_y[None],
                grid[None],
                Settings.of(k, protocol.eval_batch, protocol.learning_rate),
                batch_seed[None],
            )
            ax.plot(grid, outputs[0].numpy(), style, label=f"after {k} steps")
        ax.plot(task.support_x.numpy(), task.support_y.numpy(), "o", color="C3", label="support")
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.legend(loc="lower right", fontsize=8)
    shots = protocol.shots
    fig.suptitle(f"{shots}-shot sine regression (amplitude {amplitude:.2f}, phase {phase:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
