"""Milliseconds per meta-iteration: the project's trainer next to a plain eager Keras reference.

    python benchmarks/meta_step.py --preset=omniglot_5w5s --data_dir=../shared/data/omniglot

Times steady-state meta-iterations of `MetaTrainer` (warm, compiled), the same Reptile update
written the straightforward eager Keras way (a Python loop over tasks and steps, `GradientTape`,
Adam with beta1=0 assigned into the model's variables), the floating-point floor (the forward
and backward work of one meta-iteration divided by the machine's measured peak matmul rate), and
the meta-iteration's convolution kernels alone. The reference and the peak run in subprocesses
with TensorFlow's default thread pools; the trainer and the kernels with the project's
(`--intra_op_threads`, as absl_main.py). Prints one JSON object as its last line.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_reptile.config import INNER_ADAM_MODES  # noqa: E402
from keras_reptile.data.sources import load_tasks  # noqa: E402
from keras_reptile.data.streams import task_seeds  # noqa: E402
from keras_reptile.models.cost import ModelCost  # noqa: E402
from keras_reptile.presets import get_preset  # noqa: E402
from keras_reptile.run import build_stacked_model  # noqa: E402
from keras_reptile.training.strategy import make_strategy, set_threads  # noqa: E402
from keras_reptile.training.trainer import MetaTrainer  # noqa: E402


def peak_matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    matmul(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def machine_peak_gflops() -> float:
    """The machine's peak: the faster of TensorFlow's two CPU matmul kernels (oneDNN's, Eigen's),
    each measured in a subprocess with TensorFlow's default thread pools."""
    rates = []
    for onednn in ("0", "1"):
        result = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--peak_only"],
            env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn},
            capture_output=True,
            text=True,
            check=True,
        )
        rates.append(float(result.stdout.strip().splitlines()[-1]))
    return max(rates)


def inner_step_convolutions(model: keras.Model) -> list[tuple[str, int]]:
    """The convolution kernels of one inner step, as (kind, conv layer index): each layer's
    forward ("forward") and filter gradient ("filter"), and past the first layer its input
    gradient ("input")."""
    convs = [la for la in model.layers if isinstance(la, keras.layers.Conv2D)]
    kinds = ("forward", "filter", "input")
    return [(kind, i) for i in range(len(convs)) for kind in kinds if i or kind != "input"]


def _time_kernels(model: keras.Model, images: int, steps: int, kernels, repeats: int = 10) -> float:
    """Milliseconds `steps` copies of `kernels` take as independent ops on the current thread
    pools, each copy on distinct random inputs (so nothing is deduplicated or hoisted)."""
    convs = [la for la in model.layers if isinstance(la, keras.layers.Conv2D)]
    rng = np.random.default_rng(0)

    def random(shape):
        return tf.constant(rng.standard_normal(shape).astype(np.float32))

    operands = []
    for _ in range(steps):
        for kind, i in kernels:
            layer = convs[i]
            x_shape = (images, *layer.input.shape[1:])
            dy_shape = (images, *layer.output.shape[1:])
            operands.append(
                (
                    kind,
                    layer,
                    x_shape,
                    random(x_shape),
                    random(layer.kernel.shape),
                    random(dy_shape),
                )
            )

    @tf.function
    def run():
        picks = []
        for kind, layer, x_shape, x, kernel, dy in operands:
            options = dict(strides=(1, *layer.strides, 1), padding=layer.padding.upper())
            if kind == "forward":
                out = tf.nn.conv2d(x, kernel, **options)
            elif kind == "filter":
                out = tf.raw_ops.Conv2DBackpropFilter(
                    input=x, filter_sizes=kernel.shape, out_backprop=dy, **options
                )
            else:
                out = tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=x_shape, filter=kernel, out_backprop=dy, **options
                )
            picks.append(out[0, 0, 0, 0])
        return tf.add_n(picks)

    run().numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run().numpy()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def conv_kernels_ms(model: keras.Model, images: int, steps: int) -> float:
    """Milliseconds the convolution kernels of `steps` inner steps on `images` images take alone,
    as independent ops on the current thread pools: a bound below any computation of those steps
    on these kernels, when the steps are independent (tasks side by side)."""
    return _time_kernels(model, images, steps, inner_step_convolutions(model))


def conv_critical_path_ms(model: keras.Model, images: int, steps: int) -> float:
    """Milliseconds of the convolution kernels on the dependency chain of `steps` consecutive
    inner steps (one task adapting): the forward convolutions in turn, then per layer from the
    last the slower of its filter and input gradients (the two can run side by side). Each
    kernel is timed alone on the current thread pools; a bound below any sequential adaptation
    on these kernels."""
    kernels = inner_step_convolutions(model)
    ms = {k: _time_kernels(model, images, steps, [k]) for k in kernels}
    layers = range(max(i for _, i in kernels) + 1)
    forward = sum(ms[("forward", i)] for i in layers)
    backward = sum(max(ms[("filter", i)], ms.get(("input", i), 0.0)) for i in layers)
    return forward + backward


def eager_reference_ms(config, tasks, model: keras.Model, iterations: int) -> float:
    """The same Reptile meta-iteration, written plainly in eager Keras (the tasks' Adam
    statistics carried as `config.inner_adam` says)."""
    sequential = config.inner_adam == "sequential"
    theta = [v.numpy() for v in model.trainable_variables]
    v_state = [np.zeros_like(w) for w in theta]
    adam_step = 0
    times = []
    for it in range(iterations + 1):
        start = time.perf_counter()
        new_weights, new_v = [], []
        for j in range(config.meta_batch):
            for var, w in zip(model.trainable_variables, theta):
                var.assign(w)
            if j == 0 or not sequential:
                v = [tf.constant(x) for x in v_state]
            task = tasks.sample(
                task_seeds(99, [it * config.meta_batch + j])[0], config.classes, config.train_shots
            )
            order = np.random.default_rng(it * 31 + j).permutation(task.support_x.shape[0])
            for k in range(config.inner_iters):
                idx = order[(k * config.inner_batch) % len(order) :][: config.inner_batch]
                x, y = tf.gather(task.support_x, idx), tf.gather(task.support_y, idx)
                with tf.GradientTape() as tape:
                    logits = model(x, training=True)
                    loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
                grads = tape.gradient(loss, model.trainable_variables)
                t = adam_step + (j * config.inner_iters if sequential else 0) + k + 1
                lr_t = config.learning_rate * np.sqrt(1 - config.adam_beta2**t)
                for i, (var, g) in enumerate(zip(model.trainable_variables, grads)):
                    v[i] = config.adam_beta2 * v[i] + (1 - config.adam_beta2) * tf.square(g)
                    var.assign_sub(lr_t * g / (tf.sqrt(v[i]) + config.adam_epsilon))
            new_weights.append([var.numpy() for var in model.trainable_variables])
            new_v.append([x.numpy() for x in v])
        eps = 1.0 - it / config.meta_iters
        theta = [w + eps * (np.mean(ws, axis=0) - w) for w, *ws in zip(theta, *new_weights)]
        v_state = new_v[-1] if sequential else [np.mean(vs, axis=0) for vs in zip(*new_v)]
        adam_step += config.meta_batch * config.inner_iters
        if it:  # the first iteration warms up
            times.append(time.perf_counter() - start)
    for var, w in zip(model.trainable_variables, theta):
        var.assign(w)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="omniglot_5w5s")
    parser.add_argument("--data_dir", default=os.environ.get("KERAS_REPTILE_DATA_DIR"))
    parser.add_argument("--iterations", type=int, default=100, help="timed meta-iterations")
    parser.add_argument("--reference_iterations", type=int, default=5)
    parser.add_argument("--task_groups", type=int, default=None, help="overrides the preset's")
    parser.add_argument(
        "--inner_adam", choices=INNER_ADAM_MODES, default=None, help="overrides the preset's"
    )
    parser.add_argument("--intra_op_threads", type=int, default=1, help="as absl_main.py's")
    parser.add_argument("--inter_op_threads", type=int, default=0, help="as absl_main.py's")
    parser.add_argument("--baselines_only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--peak_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = get_preset(args.preset).recipe.replace(eval_interval=0)
    if args.task_groups:
        config = config.replace(task_groups=args.task_groups)
    if args.inner_adam:
        config = config.replace(inner_adam=args.inner_adam)
    if args.peak_only:
        print(peak_matmul_gflops())
        return
    if args.baselines_only:
        # TensorFlow's default thread pools: the reference at its own best.
        train_tasks, _ = load_tasks(config, None, args.data_dir)
        model = build_stacked_model(config, train_tasks.input_shape).model
        reference = eager_reference_ms(config, train_tasks, model, args.reference_iterations)
        print(json.dumps({"reference": reference}))
        return
    baselines = subprocess.run(
        [sys.executable, __file__, *sys.argv[1:], "--baselines_only"],
        capture_output=True,
        text=True,
        check=True,
    )
    baselines = json.loads(baselines.stdout.strip().splitlines()[-1])
    set_threads(args.intra_op_threads, args.inter_op_threads)
    train_tasks, _ = load_tasks(config, None, args.data_dir)
    model = build_stacked_model(config, train_tasks.input_shape)

    with tempfile.TemporaryDirectory() as model_dir:
        trainer = MetaTrainer(
            config, model, make_strategy("default"), model_dir, train_tasks=train_tasks
        )
        loop = tf.function(trainer.meta_step.loop)
        loop(tf.constant(10))[0].numpy()  # trace and warm up
        chunk = 10
        times = []
        for _ in range(max(args.iterations // chunk, 1)):
            start = time.perf_counter()
            loop(tf.constant(chunk))[0].numpy()
            times.append((time.perf_counter() - start) / chunk)
    ms = 1000 * statistics.median(times)
    task_steps = config.meta_batch * config.inner_iters
    kernels = conv_kernels_ms(model.model, config.inner_batch, task_steps)
    reference = baselines["reference"]
    images = config.meta_batch * config.inner_iters * config.inner_batch
    gflop = ModelCost.of(model.model).training_flops(images) / 1e9
    peak = machine_peak_gflops()
    floor = 1000 * gflop / peak
    # The ratios are taken of the printed (rounded) times, so the output agrees with itself.
    ms, reference, floor, kernels = (round(v, 1) for v in (ms, reference, floor, kernels))
    result = {
        "preset": args.preset,
        "task_groups": config.task_groups,
        "inner_adam": config.inner_adam,
        "intra_op_threads": args.intra_op_threads,
        "ms_per_meta_iteration": ms,
        "reference_eager_ms": reference,
        "speedup_vs_eager": round(reference / ms, 1),
        "gflop_per_meta_iteration": round(gflop, 2),
        "peak_matmul_gflops": round(peak, 1),
        "flop_floor_ms": floor,
        # The same meta-iteration's convolution kernels alone, as independent ops.
        "conv_kernels_ms": kernels,
        "ms_over_floor": round(ms / floor, 2),
        "conv_kernels_over_floor": round(kernels / floor, 2),
        "meta_iters_per_hour": round(3600e3 / ms),
        # Training alone at this rate; the periodic and final evaluations come on top.
        "estimated_training_minutes": round(ms * config.meta_iters / 60e3, 1),
    }
    print(
        f"{args.preset} ({config.inner_adam} inner Adam): {ms:.1f} ms per meta-iteration "
        f"(eager reference {reference:.0f} ms); "
        f"floor {floor:.1f} ms ({gflop:.2f} GFLOP at {peak:.0f} GFLOP/s); "
        f"its convolution kernels alone {kernels:.1f} ms; "
        f"{config.meta_iters:,} meta-iterations in about "
        f"{result['estimated_training_minutes']:.0f} minutes"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
