import json
import os

import pytest

from keras_reptile.training.results import write_json


def test_write_json_replaces_the_file_whole_and_leaves_no_scratch(tmp_path):
    path = str(tmp_path / "recipe.json")
    write_json(path, {"a": 1})
    write_json(path, {"b": [1, 2]})
    with open(path) as f:
        assert json.load(f) == {"b": [1, 2]}
    assert os.listdir(tmp_path) == ["recipe.json"]


def test_write_json_that_fails_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "recipe.json")
    write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})
    with open(path) as f:
        assert json.load(f) == {"a": 1}
    assert os.listdir(tmp_path) == ["recipe.json"]
