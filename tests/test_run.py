import json

import numpy as np
import pytest
import tensorflow as tf

from keras_reptile.config import Config
from keras_reptile.export.saved_model import read_exported_state
from keras_reptile.run import run

# Adam in the inner loop, so the carried statistics travel through the export too; a constant
# meta step, so a run continued from an export can be compared with one that never stopped.
SINE = Config(
    sgd=False,
    learning_rate=0.01,
    meta_step=0.5,
    meta_step_final=0.5,
    meta_batch=2,
    meta_iters=4,
    inner_iters=2,
    eval_samples=8,
    eval_iters=3,
    eval_interval=0,
    checkpoint_interval=2,
)


def _run(config, tmp_path, name, **kwargs):
    kwargs.setdefault("export_dir", str(tmp_path / f"{name}_export"))
    return run(config, model_dir=str(tmp_path / name), name="sine", **kwargs)


def _card(export_dir):
    return json.loads((export_dir / "1/assets.extra/model_card.json").read_text())


def test_warm_start_from_an_export_evaluates_and_exports_the_same_run(tmp_path):
    first = _run(SINE, tmp_path, "first")
    again = _run(
        SINE, tmp_path, "again", mode="evaluate", warm_start_from=str(tmp_path / "first_export")
    )
    assert again == first  # same weights, Adam statistics and step: the same measured numbers
    _run(SINE, tmp_path, "again", mode="export")
    card, source = _card(tmp_path / "again_export"), _card(tmp_path / "first_export")
    assert card["measured"] == source["measured"]
    assert card["meta_iterations"] == 4
    assert card["warm_started_from"] == {"model": "sine", "version": 1, "meta_iterations": 4}
    one = read_exported_state(str(tmp_path / "first_export/1"))
    two = read_exported_state(str(tmp_path / "again_export"))  # base folder: latest version
    assert two.adam_step == one.adam_step > 0
    for a, b in zip(one.weights + one.adam_v, two.weights + two.adam_v):
        np.testing.assert_array_equal(a, b)


def test_warm_start_under_mirrored_gives_the_same_numbers(tmp_path):
    first = _run(SINE, tmp_path, "first")
    mirrored = SINE.replace(strategy="mirrored")
    again = _run(
        mirrored, tmp_path, "again", mode="evaluate", warm_start_from=str(tmp_path / "first_export")
    )
    assert again == first


def test_training_on_from_an_export_matches_a_run_that_never_stopped(tmp_path):
    _run(SINE.replace(meta_iters=2), tmp_path, "half")
    _run(SINE, tmp_path, "rest", warm_start_from=str(tmp_path / "half_export"))
    _run(SINE, tmp_path, "whole")
    rest = read_exported_state(str(tmp_path / "rest_export"))
    whole = read_exported_state(str(tmp_path / "whole_export"))
    assert rest.meta_iterations == whole.meta_iterations == 4
    assert rest.adam_step == whole.adam_step
    for a, b in zip(rest.weights + rest.adam_v, whole.weights + whole.adam_v):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_warm_start_keeps_an_existing_checkpoint(tmp_path, capsys):
    _run(SINE.replace(meta_iters=2), tmp_path, "other")
    _run(SINE, tmp_path, "run", mode="train")
    capsys.readouterr()
    _run(SINE, tmp_path, "run", mode="export", warm_start_from=str(tmp_path / "other_export"))
    assert "already holds a checkpoint at step 4" in capsys.readouterr().out
    assert _card(tmp_path / "run_export")["meta_iterations"] == 4
    assert "warm_started_from" not in _card(tmp_path / "run_export")


@pytest.mark.parametrize(
    "config, match",
    [
        (SINE.replace(seed=1), "seed=0.*Received: seed=1"),
        (SINE.replace(sgd=True), "sgd=False.*Received: sgd=True"),
    ],
)
def test_warm_start_from_another_run_is_refused(tmp_path, config, match):
    _run(SINE.replace(meta_iters=2), tmp_path, "source")
    with pytest.raises(ValueError, match=match):
        _run(config, tmp_path, "run", warm_start_from=str(tmp_path / "source_export"))
    # The refused attempt left nothing behind that would stop the right run in the same folder.
    _run(SINE, tmp_path, "run", mode="export", warm_start_from=str(tmp_path / "source_export"))


def test_warm_start_from_a_folder_without_an_export_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="Expected a keras-reptile SavedModel.*Received: path="):
        _run(SINE, tmp_path, "run", warm_start_from=str(tmp_path / "empty"))


def test_warm_start_from_another_packages_saved_model_is_refused(tmp_path):
    other = tmp_path / "other/1"
    tf.saved_model.save(tf.Module(), str(other))
    (other / "assets.extra").mkdir()
    (other / "assets.extra/model_card.json").write_text(
        json.dumps({"meta_iterations": 1, "config": {}})
    )
    with pytest.raises(ValueError, match="not written by this package's exporter"):
        _run(SINE, tmp_path, "run", warm_start_from=str(tmp_path / "other"))
