"""The shipped model zoo: each `saved_models/<name>/<version>` as TF Serving would run it."""

import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.algorithms import AdamState
from keras_reptile.data.sources import load_tasks
from keras_reptile.data.streams import task_seeds
from keras_reptile.export import signatures as sig
from keras_reptile.export.model_card import ModelCard
from keras_reptile.run import build_stacked_model
from keras_reptile.training.evaluator import Evaluator
from keras_reptile.training.trainer import inner_optimizer
from tests.conftest import OMNIGLOT_DIR, REPO_ROOT
from tests.export.helpers import PYTHON_OPS, LoadedWithDefaults, saved_model_ops

ZOO = REPO_ROOT / "saved_models"
VERSIONS = sorted(p for p in ZOO.glob("*/*") if p.name.isdigit())
IDS = [f"{p.parent.name}/{p.name}" for p in VERSIONS]
CLASSIFIERS = [p for p in VERSIONS if not ModelCard.read(str(p)).regression]
TASKS = 20  # new tasks each model adapts to here, through a TF1 Session
KEY = 12345  # a seed stream of its own: tasks no card number was measured on


def test_the_zoo_ships_one_model_per_recipe():
    assert {p.parent.name for p in VERSIONS} >= {"sine", "omniglot_5w"}
    for path in VERSIONS:
        assert ModelCard.read(str(path)).name == path.parent.name


@pytest.mark.parametrize("path", VERSIONS, ids=IDS)
def test_card_lists_every_protocol_measured_on_these_weights(path):
    card = ModelCard.read(str(path))  # also checks each result was measured at its step
    assert card.results, "a shipped model carries measured results"
    for m in card.results:
        assert m.num_tasks == m.protocol.eval_samples and m.ci95 > 0
    # The signatures' defaults are a protocol that was measured.
    adaptations = {m.protocol.adaptation for m in card.results}
    assert card.default_protocol.adaptation in adaptations
    if card.name == "omniglot_5w":
        for shots in (1, 5):
            for transductive in (False, True):
                assert card.find(shots=shots, transductive=transductive).num_tasks == 10000


def _test_tasks(card):
    if card.recipe.dataset == "omniglot" and not OMNIGLOT_DIR.exists():
        pytest.skip(f"Omniglot not found at {OMNIGLOT_DIR}")
    _, tasks = load_tasks(card.recipe, None, str(OMNIGLOT_DIR))
    return tasks


@pytest.mark.parametrize("path", VERSIONS, ids=IDS)
def test_tf1_session_adapts_to_new_tasks_as_measured(path):
    card = ModelCard.read(str(path))
    assert not saved_model_ops(path) & PYTHON_OPS
    tasks = _test_tasks(card)
    spec = sig.signature_specs(card.input_shape, card.regression)[sig.ADAPT_AND_PREDICT]
    results = [m for m in card.results if m.split == "test" and not m.protocol.transductive]
    samples = [_sample(tasks, card, m.protocol, TASKS) for m in results]
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(path))
        sdef = meta.signature_def[sig.ADAPT_AND_PREDICT]
        output = sdef.outputs[spec.outputs[0]].name  # logits or predictions
        for measured, sample in zip(results, samples):
            scores = []
            for task in sample:
                # Only the required inputs: the SignatureDef's defaults are the card's protocol.
                feeds = {sdef.inputs[i.key].name: v for i, v in zip(spec.inputs[:3], task[:3])}
                out = sess.run(output, feeds)
                if card.regression:
                    scores.append(np.mean((out - task[3]) ** 2))
                else:
                    scores.append(np.mean(np.argmax(out, -1) == task[3]))
            if card.regression:
                assert np.mean(scores) < 3 * measured.mean + 0.1, scores
            else:
                # 20 tasks x `ways` queries: far more than 15 points below the mean is a bug.
                assert np.mean(scores) > measured.mean - 0.15, (measured, scores)


def _sample(tasks, card, protocol, count):
    """New test tasks as numpy arrays: support x, support y, query x, query y."""
    queries = protocol.eval_queries if card.regression else 1
    seeds = task_seeds(KEY, tf.range(count))
    return [
        [np.asarray(t) for t in tasks.sample(s, card.ways, protocol.shots, queries)]
        for s in tf.unstack(seeds)
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", CLASSIFIERS, ids=[f"{p.parent.name}/{p.name}" for p in CLASSIFIERS]
)
def test_served_answers_equal_the_evaluators_on_100_tasks(path):
    """Identical predictions; probabilities within 1e-5 for all but a few tasks.

    Each task runs on kernels of its own wherever it is stacked, and the evaluator's graph is fed
    its shapes and settings at run time as a served graph is; on 6 tasks of an untrained export
    that makes the two bit-identical (tests/export). On the trained zoo a few tasks still differ:
    the shipped exports come from 0.2.0 (grouped kernels in adapt_and_predict_tasks), and the
    evaluator's graph rounds differently from the served one somewhere in the adaptation, which
    Adam with beta1=0 grows (it divides by the root of the carried second moment, ~0 for channels
    meta-training left dead). Measured on 100 tasks: omniglot_5w/1 at most 3.2e-5,
    omniglot_20w/1, partly trained, at most 2.1e-3.
    """
    card = ModelCard.read(str(path))
    tasks = _test_tasks(card)
    loaded = LoadedWithDefaults(path)
    model = build_stacked_model(card.recipe, card.input_shape)
    evaluator = Evaluator(
        model, inner_optimizer(card.recipe), card.default_protocol, ways=card.ways
    )
    weights = [w.read_value() for w in loaded.weights]
    state = AdamState(loaded.adam_step.read_value(), tuple(v.read_value() for v in loaded.adam_v))
    support_x, support_y, query_x, _, _ = evaluator.sample(tasks, task_seeds(KEY, tf.range(100)))
    seeds = tf.constant([sig.SERVING_BATCH_SEED] * 100, tf.int64)
    expected = tf.function(evaluator.adapt_and_predict)(
        weights, state, support_x, support_y, query_x, seeds, (False, True)
    )
    differences = []  # per task and answer: the largest probability difference
    for transductive, logits in zip((False, True), expected):
        probabilities = tf.nn.softmax(logits).numpy()
        for t in range(100):
            served = loaded.signatures[sig.ADAPT_AND_PREDICT](
                support_images=support_x[t],
                support_labels=support_y[t],
                query_images=query_x[t],
                transductive=tf.constant(transductive),
            )
            np.testing.assert_array_equal(served[sig.CLASSES], probabilities[t].argmax(-1))
            differences.append(np.abs(served[sig.PROBABILITIES] - probabilities[t]).max())
        # The multi-task signature, ten tasks a request.
        for start in range(0, 100, 10):
            part = slice(start, start + 10)
            served = loaded.signatures[sig.ADAPT_AND_PREDICT_TASKS](
                support_images=support_x[part],
                support_labels=support_y[part],
                query_images=query_x[part],
                transductive=tf.constant(transductive),
            )
            np.testing.assert_array_equal(served[sig.CLASSES], probabilities[part].argmax(-1))
            differences.extend(np.abs(served[sig.PROBABILITIES] - probabilities[part]).max((1, 2)))
    differences = np.asarray(differences)
    print(f"within 1e-5: {np.mean(differences <= 1e-5):.3f}; largest {np.sort(differences)[-5:]}")
    if card.meta_iterations < card.recipe.meta_iters:
        # A partly trained export (a run to be continued) is far less settled: its predictions
        # are compared, not its probabilities.
        return
    assert np.mean(differences <= 1e-5) >= 0.95, np.sort(differences)[-20:]
    assert differences.max() <= 1e-3, differences.max()
