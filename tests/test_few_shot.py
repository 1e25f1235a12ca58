import os

import numpy as np
import pytest
from PIL import Image

import keras_reptile
from keras_reptile.data.preprocessing import load_image
from keras_reptile.export import signatures as sig
from keras_reptile.few_shot import resolve
from serving.launcher import REPO_ROOT
from tests.export.helpers import LoadedWithDefaults

ZOO = os.path.join(REPO_ROOT, "saved_models")


def _task(seed=0, ways=5, shots=1, queries=5):
    rng = np.random.default_rng(seed)
    support = (rng.random((ways * shots, 28, 28, 1)) > 0.7).astype(np.float32)
    labels = np.repeat(np.arange(ways, dtype=np.int32), shots)
    query = (rng.random((queries, 28, 28, 1)) > 0.7).astype(np.float32)
    return support, labels, query


@pytest.fixture(scope="module")
def omniglot_5w():
    return keras_reptile.FewShotModel.from_preset("omniglot_5w")


def test_from_preset_takes_a_zoo_name_a_base_folder_or_a_version_folder(omniglot_5w):
    base = os.path.join(ZOO, "omniglot_5w")
    latest = max(int(v) for v in os.listdir(base) if v.isdigit())
    assert omniglot_5w.path == resolve(base) == os.path.join(base, str(latest))
    assert resolve(os.path.join(base, str(latest))) == omniglot_5w.path
    assert resolve("omniglot_5w", version=latest) == omniglot_5w.path
    assert omniglot_5w.card.name == "omniglot_5w" and omniglot_5w.card.ways == 5


def test_an_unknown_name_lists_the_zoo():
    with pytest.raises(ValueError, match=r"zoo: .*omniglot_5w.*Received: preset='nope'"):
        resolve("nope")
    with pytest.raises(ValueError, match="has no version 999"):
        resolve("omniglot_5w", version=999)


def test_answers_are_the_signatures_with_the_cards_defaults(omniglot_5w):
    support, labels, query = _task()
    got = omniglot_5w.adapt_and_predict(support, labels, query)
    served = LoadedWithDefaults(omniglot_5w.path).signatures[sig.ADAPT_AND_PREDICT](
        support_images=support, support_labels=labels, query_images=query
    )
    np.testing.assert_array_equal(got[sig.CLASSES], served[sig.CLASSES].numpy())
    np.testing.assert_allclose(got[sig.PROBABILITIES], served[sig.PROBABILITIES].numpy(), atol=1e-6)
    transductive = omniglot_5w.adapt_and_predict(support, labels, query, transductive=True)
    assert set(transductive) == {sig.LOGITS, sig.PROBABILITIES, sig.CLASSES}


def test_adapt_once_then_predict_equals_adapt_and_predict(omniglot_5w):
    support, labels, query = _task(1, shots=2, queries=7)
    adapted = omniglot_5w.adapt(support, labels, inner_steps=10)
    whole = omniglot_5w.adapt_and_predict(support, labels, query, inner_steps=10)
    part = adapted.predict(query)
    np.testing.assert_array_equal(part[sig.CLASSES], whole[sig.CLASSES])
    np.testing.assert_allclose(part[sig.PROBABILITIES], whole[sig.PROBABILITIES], atol=1e-6)


def test_image_files_and_pil_images_are_prepared_as_the_client_prepares_them(omniglot_5w, tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        pixels = np.ones((105, 105), bool)
        r, c = rng.integers(10, 80, 2)
        pixels[r : r + 20, c : c + 5] = False
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    arrays = np.stack([load_image(str(p), (28, 28, 1)) for p in paths])
    labels = np.arange(5)
    from_arrays = omniglot_5w.adapt_and_predict(arrays, labels, arrays)
    from_paths = omniglot_5w.adapt_and_predict([str(p) for p in paths], labels, paths)
    with Image.open(paths[0]) as image:
        from_pil = omniglot_5w.adapt_and_predict([str(p) for p in paths], labels, [image.copy()])
    np.testing.assert_array_equal(from_paths[sig.PROBABILITIES], from_arrays[sig.PROBABILITIES])
    assert from_pil[sig.CLASSES][0] == from_arrays[sig.CLASSES][0]


def test_regression(tmp_path):
    sine = keras_reptile.FewShotModel.from_preset("sine")
    x = np.linspace(-5, 5, 10, dtype=np.float32)[:, None]
    out = sine.adapt_and_predict(x, np.sin(x), x)
    assert out[sig.PREDICTIONS].shape == (10, 1)
    adapted = sine.adapt(x, np.sin(x)).predict(x[:3])
    np.testing.assert_allclose(adapted[sig.PREDICTIONS], out[sig.PREDICTIONS][:3], atol=1e-6)
    assert sine.predict(x)[sig.PREDICTIONS].shape == (10, 1)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"support_y": np.arange(5) + 1}, r"Class ids must be in \[0, 5\)"),
        ({"support_y": np.zeros(5, np.float32)}, "must be integer class ids"),
        (
            {"support_x": np.zeros((5, 28, 28))},
            r"support_x.shape=\(5, 28, 28\)",
        ),
        ({"support_y": np.arange(4)}, "same number"),
        ({"learning_rate": -1.0}, "`learning_rate` must be > 0"),
        ({"inner_batch_size": 0}, "`eval_batch` must be >= 1"),
    ],
)
def test_bad_input_is_refused_with_what_was_expected(omniglot_5w, change, message):
    support, labels, query = _task()
    kwargs = {"support_x": support, "support_y": labels, "query_x": query, **change}
    with pytest.raises(ValueError, match=message):
        omniglot_5w.adapt_and_predict(**kwargs)
