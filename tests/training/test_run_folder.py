import pytest

from keras_reptile.config import Protocol, Recipe
from keras_reptile.export.model_card import WarmStart
from keras_reptile.training.run_folder import RunFolder, RunInfo


def test_each_file_round_trips_and_an_empty_folder_has_none(tmp_path):
    folder = RunFolder(str(tmp_path / "run"))
    assert folder.recipe() is None and folder.info() is None and folder.warm_start() is None
    assert folder.results() == [] and folder.results(periodic=True) == []
    recipe = Recipe(seed=3, inner_adam="parallel")
    info = RunInfo("sine", Protocol(shots=5), (1,), data_dir="somewhere")
    folder.write_recipe(recipe)
    folder.write_info(info)
    folder.write_warm_start(WarmStart("sine", 2, 100))
    assert folder.recipe() == recipe and folder.info() == info
    assert folder.warm_start() == WarmStart("sine", 2, 100)
    assert folder.checkpoints == str(tmp_path / "run" / "checkpoints")


def test_a_damaged_file_is_named(tmp_path):
    (tmp_path / "recipe.json").write_text("{not json")
    with pytest.raises(ValueError, match="Cannot read the run's recipe.json"):
        RunFolder(str(tmp_path)).recipe()
    (tmp_path / "run.json").write_text('{"name": "x"}')
    with pytest.raises(ValueError, match="Cannot read the run's run.json"):
        RunFolder(str(tmp_path)).info()
