"""What the inner Adam's order changes: exports of one recipe scored on the same test tasks.

The official code runs a meta-batch's tasks one after another through one Adam
(`--inner_adam=sequential`); the package's default runs them side by side from the same
statistics and carries their average (`parallel`). This scores several exports of the 5-way
Omniglot recipe (such as the shipped parallel run, a sequential run with the same seed, and a
parallel replicate) with each protocol, on the same test tasks (the seed's evaluation stream,
so every task is scored by every model), and reports each model's accuracy beside the paper's
and the paired per-task differences against the first model, with 95% intervals.

    python experiments/inner_adam.py --data_dir=../shared/data/omniglot \\
        saved_models/omniglot_5w runs/inner_adam/sequential runs/inner_adam/replicate_1

A model is an export (a version folder or its base folder). Per-task scores are kept in
`--scores_dir` (one file per model, protocol and task count), so a model is scored once; the
summary goes to `--output` as JSON and is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(REPO, "docs", "figures", "inner_adam.json")
PAPER = {  # arXiv v3, Table 2: (shots, answer) -> (mean %, 95% interval %)
    (1, "non_transductive"): (95.39, 0.09),
    (1, "transductive"): (97.68, 0.04),
    (5, "non_transductive"): (98.90, 0.10),
    (5, "transductive"): (99.48, 0.06),
}
ANSWERS = ("non_transductive", "transductive")


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean with its 95% normal-approximation interval, in percent."""

    mean: float
    ci95: float

    @classmethod
    def of(cls, values: np.ndarray) -> Interval:
        values = 100 * np.asarray(values, np.float64)
        return cls(float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(len(values))))

    def __str__(self) -> str:
        return f"{self.mean:+.2f} +- {self.ci95:.2f}" if self.mean < 0 else self.plain()

    def plain(self) -> str:
        return f"{self.mean:.2f} +- {self.ci95:.2f}"


def model_label(state) -> str:
    r = state.card.recipe
    return (
        f"{state.card.name}/{os.path.basename(state.path)} ({r.inner_adam}, seed {r.seed}, "
        f"replicate {r.replicate}, {state.card.meta_iterations} meta-iterations)"
    )


def score_model(state, protocol, num_tasks: int, data_dir: str, scores_dir: str) -> np.ndarray:
    """`[num_tasks, 2]` per-task accuracies (non-transductive, transductive) of one export."""
    from keras_reptile.data.sources import load_tasks
    from keras_reptile.data.streams import Stream, stream_key
    from keras_reptile.run import build_stacked_model
    from keras_reptile.training.evaluator import Evaluator
    from keras_reptile.training.trainer import inner_optimizer

    recipe = state.card.recipe
    key = (
        f"{state.card.name}_v{os.path.basename(state.path)}_{recipe.inner_adam}_s{recipe.seed}"
        f"_r{recipe.replicate}_it{state.card.meta_iterations}_{protocol.shots}shot_{num_tasks}"
    )
    path = os.path.join(scores_dir, key + ".npy")
    if os.path.exists(path):
        return np.load(path)
    _, test_tasks = load_tasks(recipe, protocol, data_dir)
    model = build_stacked_model(recipe, state.card.input_shape)
    evaluator = Evaluator(model, inner_optimizer(recipe), protocol, ways=recipe.classes)
    stream = stream_key(recipe.seed, Stream.EVALUATION, "test")
    scores = evaluator.task_scores(
        test_tasks, state.weights, state.optimizer_state(), num_tasks, stream
    )
    os.makedirs(scores_dir, exist_ok=True)
    np.save(path, scores)
    return scores


def compare(models, protocols, num_tasks, data_dir, scores_dir) -> dict:
    """Each model's accuracy per protocol and answer, and its paired difference to the first."""
    seeds = {m.card.recipe.seed for m in models}
    if len(seeds) != 1:
        raise ValueError(
            "Paired differences need one class split and one test-task stream: the models must "
            f"share their seed (use --replicate for other trainings). Received: seeds={seeds}"
        )
    summary = {"num_tasks": num_tasks, "models": [model_label(m) for m in models], "rows": []}
    for protocol in protocols:
        scores = [score_model(m, protocol, num_tasks, data_dir, scores_dir) for m in models]
        for a, answer in enumerate(ANSWERS):
            row = {
                "shots": protocol.shots,
                "answer": answer,
                "paper": PAPER[protocol.shots, answer],
            }
            row["accuracy"] = [dataclasses.asdict(Interval.of(s[:, a])) for s in scores]
            row["paired_difference_to_first"] = [
                dataclasses.asdict(Interval.of(s[:, a] - scores[0][:, a])) for s in scores[1:]
            ]
            summary["rows"].append(row)
    return summary


def print_summary(summary: dict) -> None:
    for i, label in enumerate(summary["models"]):
        print(f"model {i}: {label}")
    print(f"{summary['num_tasks']} test tasks, every model on the same tasks")
    for row in summary["rows"]:
        paper = "{:.2f} +- {:.2f}".format(*row["paper"])
        accs = "; ".join(Interval(**a).plain() for a in row["accuracy"])
        diffs = "; ".join(str(Interval(**d)) for d in row["paired_difference_to_first"])
        print(
            f"{row['shots']}-shot {row['answer']:>16}: paper {paper}; models {accs}; "
            f"paired difference to model 0: {diffs}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="exports: version folders or base folders")
    parser.add_argument("--data_dir", default=os.environ.get("KERAS_REPTILE_DATA_DIR"))
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--eval_samples", type=int, default=10000)
    parser.add_argument("--scores_dir", default=os.path.join("runs", "inner_adam", "scores"))
    parser.add_argument("--output", default=OUTPUT)
    parser.add_argument("--intra_op_threads", type=int, default=1, help="as absl_main.py's")
    args = parser.parse_args()

    from keras_reptile.export.saved_model import read_exported_state
    from keras_reptile.presets import get_preset
    from keras_reptile.training.strategy import set_threads

    set_threads(args.intra_op_threads, 0)
    try:
        models = [read_exported_state(path) for path in args.models]
        protocols = [
            get_preset(f"omniglot_5w{shots}s").protocol.replace(eval_samples=args.eval_samples)
            for shots in args.shots
        ]
        summary = compare(models, protocols, args.eval_samples, args.data_dir, args.scores_dir)
    except (ValueError, KeyError) as error:
        sys.exit(f"Error: {error}")
    print_summary(summary)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
