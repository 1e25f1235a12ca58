"""A short omniglot_5w1s run on the real data learns (slow; CI runs it)."""

import pytest

from keras_reptile.presets import get_preset
from keras_reptile.run import run
from tests.conftest import OMNIGLOT_DIR, needs_omniglot


@needs_omniglot
@pytest.mark.slow
def test_few_hundred_meta_iterations_score_well_above_chance(tmp_path):
    config = get_preset("omniglot_5w1s").replace(
        meta_iters=300,
        eval_samples=200,
        eval_interval=0,
        eval_train_classes=False,
        checkpoint_interval=300,
    )
    results = run(
        config,
        mode="all",
        model_dir=str(tmp_path / "run"),
        export_dir=str(tmp_path / "export"),
        data_dir=str(OMNIGLOT_DIR),
        name="omniglot_5w1s",
    )
    test = results["test"]
    # Chance is 20%; 300 iterations reach about 60% (measured: 62 +- 3%).
    assert test["non_transductive"]["mean"] > 0.45, test
    assert test["transductive"]["mean"] > 0.45, test
    assert (tmp_path / "export" / "1" / "saved_model.pb").exists()
