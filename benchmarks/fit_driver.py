"""The training API's driver against `keras.Model.fit`: milliseconds per meta-iteration.

    python benchmarks/fit_driver.py --preset=omniglot_5w5s --data_dir=../shared/data/omniglot

`keras_reptile.Reptile.fit` drives `MetaTrainer.train`: one compiled call (a `tf.range` loop of
the recipe's `summary_interval` meta-iterations) per Keras batch, with Keras's `CallbackList` and
`History`. The alternative is Keras's own loop: a `keras.Model` whose `train_step` runs one
meta-iteration (the same `MetaStep`), `compile(steps_per_execution=summary_interval)` and
`fit` over a dummy dataset. Both run `--iterations` meta-iterations after a warm-up that traces
them, from the same state and in alternating rounds; it prints each driver's median ms per
meta-iteration and whether both reached the same weights (the maths is one `MetaStep`, so they
should, bit for bit). Prints one JSON object as its last line.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_reptile.data.sources import load_tasks  # noqa: E402
from keras_reptile.presets import get_preset  # noqa: E402
from keras_reptile.run import build_stacked_model  # noqa: E402
from keras_reptile.training.strategy import make_strategy, set_threads  # noqa: E402
from keras_reptile.training.trainer import MetaTrainer  # noqa: E402


class KerasFitDriver(keras.Model):
    """`keras.Model.fit` over a `MetaStep`: each `train_step` is one meta-iteration."""

    def __init__(self, meta_step):
        super().__init__()
        self._meta_step = [meta_step]  # a list: Keras does not track what is inside

    def train_step(self, data):
        # Keras runs train_step in a replica context; MetaStep distributes its own tasks.
        loss, eps = tf.distribute.get_replica_context().merge_call(lambda _: self._meta_step[0]())
        return {"loss": loss, "meta_step_size": eps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="omniglot_5w5s")
    parser.add_argument("--data_dir", default=os.environ.get("KERAS_REPTILE_DATA_DIR"))
    parser.add_argument("--iterations", type=int, default=200, help="per driver and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--summary_interval", type=int, default=100, help="meta-iterations per call"
    )
    parser.add_argument("--intra_op_threads", type=int, default=1, help="as absl_main.py's")
    args = parser.parse_args()
    set_threads(args.intra_op_threads, 0)
    chunk = min(args.summary_interval, args.iterations)
    recipe = get_preset(args.preset).recipe.replace(
        eval_interval=0, summary_interval=chunk, checkpoint_interval=10**9, meta_iters=10**9
    )
    train_tasks, _ = load_tasks(recipe, None, args.data_dir)
    times = {"reptile_fit": [], "keras_model_fit": []}
    weights = {}
    with tempfile.TemporaryDirectory() as scratch:
        trainers = {
            name: MetaTrainer(
                recipe,
                build_stacked_model(recipe, train_tasks.input_shape),
                make_strategy("default"),
                os.path.join(scratch, name),
                train_tasks=train_tasks,
            )
            for name in times
        }
        loop = tf.function(trainers["reptile_fit"].meta_step.loop)
        keras_driver = KerasFitDriver(trainers["keras_model_fit"].meta_step)
        keras_driver.compile(steps_per_execution=chunk, jit_compile=False)
        data = tf.data.Dataset.range(1).repeat()

        def run_reptile(n):
            done = 0
            while done < n:
                loop(tf.constant(min(chunk, n - done)))[0].numpy()
                done += chunk

        def run_keras(n):
            keras_driver.fit(data, steps_per_epoch=n, epochs=1, verbose=0, shuffle=False)

        runners = {"reptile_fit": run_reptile, "keras_model_fit": run_keras}
        for run in runners.values():
            run(chunk)  # trace and warm up
        for _ in range(args.rounds):
            for name, run in runners.items():
                start = time.perf_counter()
                run(args.iterations)
                times[name].append(1000 * (time.perf_counter() - start) / args.iterations)
        for name, trainer in trainers.items():
            weights[name] = trainer.state.numpy_weights()
            steps = int(trainer.state.step.numpy())
            if steps != chunk + args.rounds * args.iterations:
                raise RuntimeError(f"{name} ran {steps} meta-iterations.")
    same = all(
        np.array_equal(a, b) for a, b in zip(weights["reptile_fit"], weights["keras_model_fit"])
    )
    result = {
        "preset": args.preset,
        "meta_iterations_per_call": chunk,
        "reptile_fit_ms": [round(t, 1) for t in times["reptile_fit"]],
        "keras_model_fit_ms": [round(t, 1) for t in times["keras_model_fit"]],
        "keras_over_reptile": round(
            statistics.median(times["keras_model_fit"]) / statistics.median(times["reptile_fit"]),
            3,
        ),
        "same_weights": same,
    }
    print(
        f"{args.preset}: Reptile.fit's loop {statistics.median(times['reptile_fit']):.1f} ms, "
        f"keras.Model.fit {statistics.median(times['keras_model_fit']):.1f} ms per "
        f"meta-iteration; same weights: {same}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
