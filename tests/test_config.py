"""Recipe and Protocol values: their dict form round-trips and says only what applies."""

import pytest

from keras_reptile.config import OWN_DATA_FIELDS, Recipe
from keras_reptile.presets import PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_recipe_round_trips_and_lists_own_data_fields_only_for_own_data(name):
    recipe = PRESETS[name].recipe
    data = recipe.to_dict()
    assert Recipe.from_dict(data) == recipe
    assert (set(OWN_DATA_FIELDS) <= set(data)) == recipe.is_own_data, sorted(data)


def test_a_dict_written_with_the_own_data_defaults_still_reads():
    recipe = PRESETS["omniglot_5w1s"].recipe
    older = {**recipe.to_dict(), "image_size": 84, "channels": 3, "test_fraction": 0.2}
    assert Recipe.from_dict(older) == recipe
