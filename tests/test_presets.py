"""The presets are the paper's commands (DESIGN section 4), and the docs' table is theirs."""

import re

import pytest

from keras_reptile.presets import PRESETS, get_preset
from tests.conftest import REPO_ROOT

# preset: ways, shots, train_shots, inner_batch, inner_iters, lr, meta_iters, eval_batch
PAPER = {
    "omniglot_5w1s": (5, 1, 10, 10, 5, 0.001, 100000, 5),
    "omniglot_5w5s": (5, 5, 10, 10, 5, 0.001, 100000, 5),
    "omniglot_20w1s": (20, 1, 10, 20, 10, 0.0005, 200000, 10),
    "omniglot_20w5s": (20, 5, 10, 20, 10, 0.0005, 200000, 10),
    "miniimagenet_5w1s": (5, 1, 15, 10, 8, 0.001, 100000, 5),
    "miniimagenet_5w5s": (5, 5, 15, 10, 8, 0.001, 100000, 15),
}


def row(preset) -> tuple:
    r, p = preset.recipe, preset.protocol
    return (
        r.classes, p.shots, r.train_shots, r.inner_batch, r.inner_iters, r.learning_rate,
        r.meta_iters, p.eval_batch,
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_presets(name):
    preset = get_preset(name)
    recipe, protocol = preset.recipe.validate(), preset.protocol.validate(preset.recipe)
    assert row(preset) == PAPER[name]
    assert (recipe.meta_step, recipe.meta_step_final, recipe.meta_batch) == (1.0, 0.0, 5)
    assert (protocol.eval_iters, protocol.eval_samples, recipe.sgd) == (50, 10000, False)
    assert protocol.learning_rate == recipe.learning_rate
    assert recipe.dataset == name.split("_")[0]


def test_the_rows_of_one_dataset_and_ways_share_one_recipe_and_model():
    for a in PRESETS.values():
        for b in PRESETS.values():
            same = a.model_name == b.model_name
            assert same == (a.recipe == b.recipe), (a.name, b.name)
    assert get_preset("omniglot_5w5s").model_name == "omniglot_5w"


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="omniglot_5w1s.*Received: preset='x'"):
        get_preset("x")
    assert set(PRESETS) == set(PAPER) | {"sine", "own_images"}


def test_own_images_preset_trains_the_miniimagenet_recipe_on_a_folder():
    preset = get_preset("own_images")
    recipe = preset.recipe.validate()
    assert recipe.dataset == "folder" and recipe.is_own_data
    assert recipe.replace(dataset="miniimagenet") == get_preset("miniimagenet_5w1s").recipe
    assert (recipe.image_size, recipe.channels, recipe.rotations) == (84, 3, False)


def test_the_docs_presets_table_is_presets_py():
    text = (REPO_ROOT / "docs/training.md").read_text()
    table = text[text.index("| preset |") :].split("\n\n")[0].splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == [
        "preset", "model", "ways", "shots", "train_shots", "inner_batch", "inner_iters", "lr",
        "meta_iters", "eval_batch", "eval_iters", "optimizer",
    ]  # fmt: skip
    rows = {}
    for line in table[2:]:
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    assert set(rows) == set(PRESETS)
    for name, preset in PRESETS.items():
        r, p = preset.recipe, preset.protocol
        expected = [
            preset.model_name, r.classes, p.shots, r.train_shots, r.inner_batch, r.inner_iters,
            r.learning_rate, r.meta_iters, p.eval_batch, p.eval_iters, r.inner_optimizer,
        ]  # fmt: skip
        got = rows[name]
        assert got[0] == expected[0], name
        for cell, value in zip(got[1:], expected[1:]):
            cell = re.sub(r"[,\s]", "", cell)
            assert cell == str(value) or float(cell) == value, (name, cell, value)
