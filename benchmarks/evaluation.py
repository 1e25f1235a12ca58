"""Seconds per evaluation task of a preset's protocol, and the paper's 10,000 tasks extrapolated.

    python benchmarks/evaluation.py --preset=miniimagenet_5w1s --data_dir=DIR --tasks=100

Scores `--tasks` test tasks with the preset's protocol (both answers, from the untrained
initialization: the work per task does not depend on the weights), as the final evaluation runs
them, after one chunk that traces and warms up. Prints one JSON object as its last line.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_reptile.data.sources import load_tasks  # noqa: E402
from keras_reptile.data.streams import Stream, stream_key  # noqa: E402
from keras_reptile.presets import get_preset  # noqa: E402
from keras_reptile.run import build_stacked_model  # noqa: E402
from keras_reptile.training.evaluator import Evaluator  # noqa: E402
from keras_reptile.training.strategy import set_threads  # noqa: E402
from keras_reptile.training.trainer import inner_optimizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="omniglot_5w1s")
    parser.add_argument("--data_dir", default=os.environ.get("KERAS_REPTILE_DATA_DIR"))
    parser.add_argument("--tasks", type=int, default=100, help="timed tasks")
    parser.add_argument("--intra_op_threads", type=int, default=1, help="as absl_main.py's")
    args = parser.parse_args()
    set_threads(args.intra_op_threads, 0)
    preset = get_preset(args.preset)
    recipe, protocol = preset.recipe, preset.protocol.replace(eval_train_classes=False)
    _, test_tasks = load_tasks(recipe, protocol, args.data_dir)
    model = build_stacked_model(recipe, test_tasks.input_shape)
    optimizer = inner_optimizer(recipe)
    evaluator = Evaluator(model, optimizer, protocol, ways=recipe.classes)
    weights = model.initial_weights()
    state = optimizer.init_state(weights)
    key = stream_key(recipe.seed, Stream.EVALUATION, "test")
    evaluator.task_scores(test_tasks, weights, state, evaluator.chunk, key)  # trace, warm up
    start = time.perf_counter()
    evaluator.task_scores(test_tasks, weights, state, args.tasks, key)
    seconds = time.perf_counter() - start
    tasks = -(-args.tasks // evaluator.chunk) * evaluator.chunk  # whole chunks run
    per_task = seconds / tasks
    result = {
        "preset": args.preset,
        "shots": protocol.shots,
        "eval_iters": protocol.eval_iters,
        "eval_batch": protocol.eval_batch,
        "tasks": tasks,
        "seconds": round(seconds, 2),
        "ms_per_task": round(1000 * per_task, 1),
        "tasks_per_s": round(1 / per_task, 2),
        "minutes_for_10000_tasks": round(per_task * 10_000 / 60, 1),
    }
    print(
        f"{args.preset}: {tasks} tasks in {seconds:.1f} s ({1000 * per_task:.0f} ms per task); "
        f"10,000 tasks in about {result['minutes_for_10000_tasks']:.0f} minutes"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
