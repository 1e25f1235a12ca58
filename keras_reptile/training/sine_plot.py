"""The paper's Figure 1 for sine regression: the fit before and after k adaptation steps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_reptile.algorithms import adapt  # noqa: E402
from keras_reptile.data.tasks import task_seed  # noqa: E402


def plot_sine_adaptation(
    fmodel,
    optimizer,
    panels: dict,
    tasks,
    *,
    shots: int,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    path: str,
) -> str:
    """Plots one new sine task: true curve, support points, predictions after 0, 1 and k steps.

    Args:
        panels: dict title -> (weights, optimizer state); one subplot each (meta-learned, random).
        tasks: SineTasks.
        path: str. Where the PNG goes; returned.
    """
    sample_seed, batch_seed = tf.unstack(
        tf.random.experimental.stateless_split(task_seed(seed, 0), 2)
    )
    task = tasks.sample(sample_seed, 1, shots, 0)
    amplitude, phase = (float(t) for t in tasks.parameters(sample_seed))
    grid = np.linspace(*tasks.x_range, 200, dtype=np.float32)[:, None]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), sharey=True)
    for ax, (title, (weights, state)) in zip(np.atleast_1d(axes), panels.items()):
        ax.plot(grid, amplitude * np.sin(grid + phase), "k-", lw=2, label="true")
        for k, style in ((0, ":"), (1, "--"), (steps, "-")):
            w = adapt(
                fmodel,
                optimizer,
                weights,
                state,
                task.support_x,
                task.support_y,
                lr,
                k,
                batch_size,
                batch_seed,
            )
            ax.plot(grid, fmodel(w, grid).numpy(), style, label=f"after {k} steps")
        ax.plot(task.support_x.numpy(), task.support_y.numpy(), "o", color="C3", label="support")
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{shots}-shot sine regression (amplitude {amplitude:.2f}, phase {phase:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
