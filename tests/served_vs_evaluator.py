"""A SavedModel's served answers against the evaluator's on the same new tasks.

    python -m tests.served_vs_evaluator SAVED_MODEL_VERSION OMNIGLOT_DIR [COUNT]

Run by tests/test_zoo.py in a process of its own: outside pytest's session, whose op determinism
would change what is compared (under it TensorFlow builds sparse cross-entropy from other ops, so
an evaluator traced there differs from an export traced without it, as in a server). Prints one
JSON object.
"""

import json
import sys

import numpy as np
import tensorflow as tf

from keras_reptile.algorithms import AdamState
from keras_reptile.data.sources import load_tasks
from keras_reptile.data.streams import task_seeds
from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import ModelCard
from keras_reptile.run import build_stacked_model
from keras_reptile.training.evaluator import Evaluator
from keras_reptile.training.trainer import inner_optimizer
from tests.export.helpers import LoadedWithDefaults

KEY = 12345  # a seed stream of its own: tasks no card number was measured on


def compare(path: str, data_dir: str, count: int = 100) -> dict:
    """Both adapt signatures (one task a request; ten a request) against the evaluator on
    `count` test tasks, both answers: whether every predicted class agrees, and the largest
    differences in probabilities and logits."""
    card = ModelCard.read(path)
    _, tasks = load_tasks(card.recipe, None, data_dir)
    loaded = LoadedWithDefaults(path)
    model = build_stacked_model(card.recipe, card.input_shape)
    evaluator = Evaluator(
        model, inner_optimizer(card.recipe), card.default_protocol, ways=card.ways
    )
    weights = [w.read_value() for w in loaded.weights]
    state = AdamState(loaded.adam_step.read_value(), tuple(v.read_value() for v in loaded.adam_v))
    support_x, support_y, query_x, _, _ = evaluator.sample(tasks, task_seeds(KEY, tf.range(count)))
    seeds = tf.constant([sig.SERVING_BATCH_SEED] * count, tf.int64)
    expected = evaluator.adapt_and_predict(weights, state, support_x, support_y, query_x, seeds)
    classes_equal, probabilities, logits = True, [], []
    for transductive, want in zip((False, True), expected):
        want, want_probabilities = want.numpy(), tf.nn.softmax(want).numpy()
        single = [
            loaded.signatures[sig.ADAPT_AND_PREDICT](
                support_images=support_x[t],
                support_labels=support_y[t],
                query_images=query_x[t],
                transductive=tf.constant(transductive),
            )
            for t in range(count)
        ]
        multi = [
            loaded.signatures[sig.ADAPT_AND_PREDICT_TASKS](
                support_images=support_x[s : s + 10],
                support_labels=support_y[s : s + 10],
                query_images=query_x[s : s + 10],
                transductive=tf.constant(transductive),
            )
            for s in range(0, count, 10)
        ]
        for served in (
            {k: np.stack([o[k] for o in single]) for k in single[0]},
            {k: np.concatenate([o[k] for o in multi]) for k in multi[0]},
        ):
            classes_equal &= bool(np.array_equal(served[sig.CLASSES], want.argmax(-1)))
            probabilities.append(np.abs(served[sig.PROBABILITIES] - want_probabilities).max())
            logits.append(np.abs(served[sig.LOGITS] - want).max())
    return {
        "tasks": count,
        "classes_equal": classes_equal,
        "max_probability_difference": float(max(probabilities)),
        "max_logit_difference": float(max(logits)),
    }


if __name__ == "__main__":
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    print(json.dumps(compare(sys.argv[1], sys.argv[2], count)))
