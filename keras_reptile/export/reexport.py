"""Rebuilds an exported version with this package's signatures, from its own variables and card.

    python -m keras_reptile.export.reexport saved_models/omniglot_5w/4 [more versions...]

The version keeps its number, weights, Adam statistics and model card (so its measured results);
its graph, signatures and warmup requests are rewritten. Before the new folder replaces the old,
`adapt_and_predict` of both must give bit-identical outputs on generated tasks (both answers of a
classifier), and the new `adapt` then `predict_adapted` must give those same outputs.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import tensorflow as tf

from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import ModelCard
from keras_reptile.export.saved_model import (
    ServingModule,
    export_saved_model,
    read_exported_state,
)
from keras_reptile.run import build_stacked_model
from keras_reptile.training.trainer import inner_optimizer

CHECK_TASKS = 3  # generated tasks compared before a version is replaced


def reexport(path: str, num_tasks: int = CHECK_TASKS) -> str:
    """Rewrites the SavedModel version folder `path` in place; returns its path.

    Raises RuntimeError, leaving the version as it was, if the rewritten version answers a
    generated task differently in any bit.
    """
    state = read_exported_state(path)
    if os.path.normpath(state.path) != os.path.normpath(path):
        raise ValueError(
            f"Expected a version folder (saved_models/<name>/<version>). Received: path={path!r}"
        )
    card = state.card
    module = ServingModule(
        build_stacked_model(card.recipe, card.input_shape),
        state.weights,
        inner_optimizer(card.recipe),
        state.adam_step,
        state.adam_v,
        protocol=card.default_protocol,
        ways=card.ways,
    )
    return export_saved_model(
        module,
        os.path.dirname(state.path),
        card,
        version=state.version,
        verify=lambda new: check_same_answers(state.path, new, card, num_tasks),
    )


def generated_tasks(card: ModelCard, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`count` tasks of random examples in the card's shapes, keyed as `adapt_and_predict`'s
    inputs: `ways * shots` support examples (every class `shots` times, or random targets) and
    the queries of an evaluation task."""
    rng = np.random.default_rng(seed)
    protocol, kind = card.default_protocol, card.task_kind
    keys, support = kind.keys, card.ways * protocol.shots
    queries = card.ways * kind.queries_per_class(protocol.eval_queries)
    tasks = []
    for _ in range(count):
        x = rng.random((support, *card.input_shape), dtype=np.float32)
        y = kind.generated_targets(rng, card.ways, protocol.shots)
        query = rng.random((queries, *card.input_shape), dtype=np.float32)
        tasks.append({keys.support: x, keys.targets: y, keys.query: query})
    return tasks


def check_same_answers(old_path: str, new_path: str, card: ModelCard, num_tasks: int) -> None:
    """Raises RuntimeError unless `adapt_and_predict` of both SavedModels, and `adapt` then
    `predict_adapted` of the new one, give bit-identical outputs on `num_tasks` generated tasks
    with the card's default protocol (each answer of a classifier)."""
    old, new = tf.saved_model.load(old_path), tf.saved_model.load(new_path)
    p, keys = card.default_protocol, card.task_kind.keys
    adaptation = {
        sig.INNER_STEPS: tf.constant(p.eval_iters, tf.int32),
        sig.INNER_BATCH_SIZE: tf.constant(p.eval_batch, tf.int32),
        sig.LEARNING_RATE: tf.constant(p.learning_rate, tf.float32),
    }
    answers = [{}]
    if card.task_kind.transductive_option:
        answers = [{sig.TRANSDUCTIVE: tf.constant(a.transductive)} for a in card.task_kind.answers]
    for t, task in enumerate(generated_tasks(card, num_tasks)):
        support = {keys.support: task[keys.support], keys.targets: task[keys.targets]}
        adapted = new.signatures[sig.ADAPT](**support, **adaptation)[sig.ADAPTED_WEIGHTS]
        for answer in answers:
            before = old.signatures[sig.ADAPT_AND_PREDICT](**task, **adaptation, **answer)
            after = new.signatures[sig.ADAPT_AND_PREDICT](**task, **adaptation, **answer)
            predict = {sig.ADAPTED_WEIGHTS: adapted, keys.query: task[keys.query], **answer}
            if card.task_kind.transductive_option:  # the non-transductive answer reads it
                predict[keys.support] = task[keys.support]
            split = new.signatures[sig.PREDICT_ADAPTED](**predict)
            for what, outputs in (("adapt_and_predict", after), ("predict_adapted", split)):
                for key, value in before.items():
                    if not np.array_equal(value.numpy(), outputs[key].numpy()):
                        difference = np.abs(
                            value.numpy().astype(np.float64) - outputs[key].numpy()
                        ).max()
                        raise RuntimeError(
                            f"Re-export check failed: the rewritten {what} answers generated task "
                            f"{t} differently from the old adapt_and_predict (output {key!r}, "
                            f"{answer or card.task_kind.name}, largest difference {difference}). "
                            f"The version at {old_path} is left as it was."
                        )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for version in sys.argv[1:]:
        print(f"Re-exported {reexport(version)}", flush=True)
