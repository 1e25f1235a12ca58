"""Tasks per second sampled, next to tasks per second trained: sampling must not starve training.

    python benchmarks/task_sampling.py --preset=omniglot_5w1s --data_dir=../shared/data/omniglot

Prints one JSON object as its last line.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from keras_reptile.data.sources import load_tasks  # noqa: E402
from keras_reptile.data.streams import task_seeds  # noqa: E402
from keras_reptile.presets import get_preset  # noqa: E402
from keras_reptile.run import build_stacked_model  # noqa: E402
from keras_reptile.training.strategy import make_strategy  # noqa: E402
from keras_reptile.training.trainer import MetaTrainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="omniglot_5w1s")
    parser.add_argument("--data_dir", default=os.environ.get("KERAS_REPTILE_DATA_DIR"))
    parser.add_argument("--iterations", type=int, default=50, help="timed meta-iterations")
    args = parser.parse_args()
    recipe = get_preset(args.preset).recipe.replace(eval_interval=0)
    train_tasks, _ = load_tasks(recipe, None, args.data_dir)
    shots, ways, batch = recipe.train_shots, recipe.classes, recipe.meta_batch

    @tf.function
    def sample(step):
        # What one meta-iteration samples: meta_batch tasks, each from its own stateless seed.
        total = tf.constant(0.0)
        for j in range(batch):
            task = train_tasks.sample(task_seeds(0, [step * batch + j])[0], ways, shots)
            total += tf.reduce_sum(task.support_x)
        return total

    sample(tf.constant(0, tf.int64))
    n = args.iterations * 20
    start = time.perf_counter()
    for i in range(n):
        sample(tf.constant(i, tf.int64))
    sampled = n * batch / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as model_dir:
        model = build_stacked_model(recipe, train_tasks.input_shape)
        trainer = MetaTrainer(
            recipe, model, make_strategy("default"), model_dir, train_tasks=train_tasks
        )
        loop = tf.function(trainer.meta_step.loop)
        loop(tf.constant(5))  # trace and warm up
        start = time.perf_counter()
        loop(tf.constant(args.iterations))
        trained = args.iterations * batch / (time.perf_counter() - start)
    result = {
        "preset": args.preset,
        "tasks_sampled_per_s": round(sampled, 1),
        "tasks_trained_per_s": round(trained, 1),
        "sampling_share_of_a_meta_iteration": round(trained / sampled, 4),
    }
    print(f"sampled {sampled:.0f} tasks/s, trained {trained:.1f} tasks/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
