"""The paper's inner-loop gradient-combination experiment on 5-way 5-shot Omniglot, with its figure.

Which sums of inner-loop gradients meta-learn? With plain SGD in the inner loop, Reptile's update
after k steps is the sum g1 + ... + gk of the k mini-batch gradients (times the learning rate),
and first-order MAML's is the last one, gk. Each of the ten combinations trains through the
package's own training code into its own run folder, test accuracy measured every
`--eval_interval` meta-iterations on the same `--eval_tasks` test tasks. A run's curve is added
to the CSV when the run completes; an interrupted run resumes from its last checkpoint.

    python experiments/gradient_combinations.py --data_dir=../shared/data/omniglot
    python experiments/gradient_combinations.py --plot_only   # redraw the figure from the CSV
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys

import filelock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

from keras_reptile.config import Protocol, Recipe  # noqa: E402
from keras_reptile.training.results import PERIODIC_RESULTS_FILE, read_measurements  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = os.path.join(REPO, "docs", "figures")
CSV_PATH = os.path.join(FIGURES, "gradient_combinations.csv")
PNG_PATH = os.path.join(FIGURES, "gradient_combinations.png")
COLUMNS = (
    "combination",
    "meta_iteration",
    "test_accuracy",
    "test_accuracy_ci95",
    "transductive_test_accuracy",
    "transductive_test_accuracy_ci95",
    "num_tasks",
    "inner_iters",
    "train_shots",
    "meta_step",
    "first_order",
)


@dataclasses.dataclass(frozen=True)
class Combination:
    """One curve: which inner-loop gradients the meta-update sums (the official code's flags).

    Args:
        name: str. The gradients combined, as in the paper's legend.
        inner_iters: int. Inner SGD steps (k).
        train_shots: int. Examples per class in a meta-training task (5 per step, so every
            step's mini-batch of 25 holds other examples).
        meta_step: float. Initial outer step size (annealed to 0); the averages divide by k.
        first_order: bool. Only the last step's gradient (first-order MAML) instead of the sum.
    """

    name: str
    inner_iters: int
    train_shots: int
    meta_step: float
    first_order: bool

    @property
    def slug(self) -> str:
        """A folder name: `g1+g2` -> `g1_plus_g2`, `(g1+g2)/2` -> `mean_g1_plus_g2`."""
        slug = self.name.replace("+", "_plus_")
        if slug.startswith("("):
            slug = "mean_" + slug[1 : slug.index(")")]
        return slug


COMBINATIONS = (
    Combination("g1", 1, 5, 0.25, False),
    Combination("g1+g2", 2, 10, 0.25, False),
    Combination("(g1+g2)/2", 2, 10, 0.125, False),
    Combination("g2", 2, 10, 0.25, True),
    Combination("g1+g2+g3", 3, 15, 0.25, False),
    Combination("(g1+g2+g3)/3", 3, 15, 0.08325, False),
    Combination("g3", 3, 15, 0.25, True),
    Combination("g4", 4, 20, 0.25, True),
    Combination("g1+g2+g3+g4", 4, 20, 0.25, False),
    Combination("(g1+g2+g3+g4)/4", 4, 20, 0.0625, False),
)
BY_NAME = {c.name: c for c in COMBINATIONS}


def recipe(c: Combination, meta_iters: int, eval_interval: int, eval_tasks: int) -> Recipe:
    """The official code's command for `c`: 5-way, SGD inner loop at 0.003 on batches of 25,
    meta-batch 1, seed 0."""
    return Recipe(
        dataset="omniglot",
        model="omniglot_cnn",
        classes=5,
        train_shots=c.train_shots,
        inner_batch=25,
        inner_iters=c.inner_iters,
        learning_rate=0.003,
        meta_step=c.meta_step,
        meta_step_final=0.0,
        meta_batch=1,
        meta_iters=meta_iters,
        foml=c.first_order,
        sgd=True,
        seed=0,
        checkpoint_interval=eval_interval,
        eval_interval=eval_interval,
        eval_interval_samples=eval_tasks,
        task_groups=1,
    )


def protocol(eval_tasks: int) -> Protocol:
    """5-shot test tasks, 5 SGD steps of batch 25 at 0.003; test classes only."""
    return Protocol(
        shots=5,
        eval_iters=5,
        eval_batch=25,
        learning_rate=0.003,
        eval_samples=eval_tasks,
        eval_train_classes=False,
    )


def curve_rows(c: Combination, model_dir: str) -> list[dict]:
    """The CSV rows of a run folder's periodic test accuracies, by meta-iteration."""
    by_step: dict[int, dict] = {}
    for m in read_measurements(model_dir, PERIODIC_RESULTS_FILE):
        if m.split != "test":
            continue
        row = by_step.setdefault(
            m.meta_iterations,
            {
                "combination": c.name,
                "meta_iteration": m.meta_iterations,
                "num_tasks": m.num_tasks,
                "inner_iters": c.inner_iters,
                "train_shots": c.train_shots,
                "meta_step": c.meta_step,
                "first_order": c.first_order,
            },
        )
        prefix = "transductive_test_accuracy" if m.protocol.transductive else "test_accuracy"
        row[prefix] = round(m.mean, 6)
        row[prefix + "_ci95"] = round(m.ci95, 6)
    return [by_step[s] for s in sorted(by_step)]


def read_csv(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: str, rows: list[dict]) -> None:
    """Writes `rows` in the combinations' order, then by meta-iteration (atomically)."""
    order = {c.name: i for i, c in enumerate(COMBINATIONS)}
    rows = sorted(rows, key=lambda r: (order[r["combination"]], int(r["meta_iteration"])))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + ".tmp", path)


def add_curve(csv_path: str, png_path: str, name: str, rows: list[dict]) -> None:
    """Replaces curve `name` in the CSV by `rows` and redraws the figure, under a lock: grid
    processes side by side update them in turn."""
    with filelock.FileLock(csv_path + ".lock"):
        others = [r for r in read_csv(csv_path) if r["combination"] != name]
        write_csv(csv_path, others + rows)
        plot(csv_path, png_path)


def plot(csv_path: str, png_path: str) -> None:
    """Test accuracy against meta-iteration, one line per combination, from the CSV alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_csv(csv_path)
    if not rows:
        raise ValueError(f"No curves to draw: the CSV has no rows. Received: csv={csv_path!r}")
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = {1: "tab:gray", 2: "tab:blue", 3: "tab:green", 4: "tab:red"}
    for c in COMBINATIONS:
        points = [r for r in rows if r["combination"] == c.name]
        if not points:
            continue
        style = ":" if c.first_order else ("--" if c.name.startswith("(") else "-")
        ax.plot(
            [int(r["meta_iteration"]) for r in points],
            [100 * float(r["test_accuracy"]) for r in points],
            linestyle=style,
            color=colors[c.inner_iters],
            label=c.name,
        )
    num_tasks = rows[0]["num_tasks"]
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(f"test accuracy, % ({num_tasks} tasks, 5-way 5-shot)")
    ax.set_title("Omniglot: inner-loop gradient combinations (SGD, meta-batch 1)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9, ncol=2)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.environ.get("KERAS_REPTILE_DATA_DIR"))
    parser.add_argument("--runs_dir", default=os.path.join("runs", "gradient_combinations"))
    parser.add_argument("--only", default="", help="comma-separated combinations (default all)")
    parser.add_argument("--meta_iters", type=int, default=40000)
    parser.add_argument("--eval_interval", type=int, default=2000)
    parser.add_argument("--eval_tasks", type=int, default=250, help="test tasks per point")
    parser.add_argument("--csv", default=CSV_PATH)
    parser.add_argument("--png", default=PNG_PATH)
    parser.add_argument("--plot_only", action="store_true", help="redraw the figure and stop")
    parser.add_argument(
        "--intra_op_threads",
        type=int,
        default=0,
        help="threads per kernel (0: TensorFlow's default); 1 suits one grid process per core",
    )
    parser.add_argument("--inter_op_threads", type=int, default=0)
    args = parser.parse_args(argv)

    if args.plot_only:
        plot(args.csv, args.png)
        print(f"Figure: {args.png}")
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BY_NAME)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(
            f"Unknown combinations; expected some of {list(BY_NAME)}. Received: only={unknown}"
        )
    if args.meta_iters % args.eval_interval:
        raise ValueError(
            "`meta_iters` must be a multiple of `eval_interval` (the curve ends at the last "
            f"meta-iteration). Received: meta_iters={args.meta_iters}, "
            f"eval_interval={args.eval_interval}"
        )
    from keras_reptile.run import run
    from keras_reptile.training.strategy import set_threads

    set_threads(args.intra_op_threads, args.inter_op_threads)

    for name in names:
        c = BY_NAME[name]
        done = [r for r in read_csv(args.csv) if r["combination"] == name]
        if done and int(done[-1]["meta_iteration"]) >= args.meta_iters:
            print(f"{name}: in {args.csv} already, skipped.", flush=True)
            continue
        model_dir = os.path.join(args.runs_dir, c.slug)
        print(f"{name}: training into {model_dir}", flush=True)
        run(
            recipe(c, args.meta_iters, args.eval_interval, args.eval_tasks),
            protocol(args.eval_tasks),
            name=f"gradient_combination_{c.slug}",
            model_dir=model_dir,
            mode="train",
            data_dir=args.data_dir,
        )
        rows = curve_rows(c, model_dir)
        if not rows or rows[-1]["meta_iteration"] != args.meta_iters:
            raise ValueError(
                f"{model_dir} holds no measurement at meta-iteration {args.meta_iters}; was it "
                "trained with other settings? Use another --runs_dir. "
                f"Received: last={rows[-1]['meta_iteration'] if rows else None}"
            )
        add_curve(args.csv, args.png, name, rows)
        print(f"{name}: {len(rows)} points added to {args.csv}; figure {args.png}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
