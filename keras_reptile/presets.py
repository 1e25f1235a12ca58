"""The paper's runs as named presets: data, kept apart from the code that runs them.

A preset is a training recipe (named after the model it ships as) and an evaluation protocol. The
paper's 1-shot and 5-shot rows of one dataset and ways train identically, so they share a recipe and
so a run folder and a SavedModel: `--preset=omniglot_5w5s` after `--preset=omniglot_5w1s` finds
the run trained and measures its 5-shot protocol. Every field can be overridden by a flag.
"""

from __future__ import annotations

import dataclasses

from keras_reptile.config import Protocol, Recipe


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named paper run.

    Args:
        name: str. The preset's name (`--preset`).
        model_name: str. The trained model's name: its run folder and SavedModel base folder.
        recipe: Recipe. How it is trained.
        protocol: Protocol. How it is measured.
        description: str. The paper's result for this row, or what the run shows.
    """

    name: str
    model_name: str
    recipe: Recipe
    protocol: Protocol
    description: str


# Shared by every classification run of the paper: meta_step 1 -> 0, meta_batch 5,
# Adam with beta1=0 in the inner loop; evaluation 50 inner steps on 10,000 tasks.
_PAPER = Recipe(sgd=False, meta_iters=100000)
_OMNIGLOT_5W = _PAPER.replace(
    dataset="omniglot",
    model="omniglot_cnn",
    classes=5,
    train_shots=10,
    inner_batch=10,
    inner_iters=5,
    learning_rate=0.001,
)
_OMNIGLOT_20W = _OMNIGLOT_5W.replace(
    classes=20, inner_batch=20, inner_iters=10, learning_rate=0.0005, meta_iters=200000
)
_MINIIMAGENET_5W = _PAPER.replace(
    dataset="miniimagenet",
    model="miniimagenet_cnn",
    classes=5,
    train_shots=15,
    inner_batch=10,
    inner_iters=8,
    learning_rate=0.001,
)
_PAPER_EVAL = Protocol(eval_iters=50, eval_samples=10000)
# Your own images: Mini-ImageNet's 5-way recipe on 84x84 RGB, held-out classes by seed.
_OWN_IMAGES = _MINIIMAGENET_5W.replace(dataset="folder")


def _paper(name, model_name, recipe, shots, eval_batch, description) -> Preset:
    protocol = _PAPER_EVAL.replace(
        shots=shots, eval_batch=eval_batch, learning_rate=recipe.learning_rate
    )
    return Preset(name, model_name, recipe, protocol, description)


_ALL = (
    Preset(
        "sine",
        "sine",
        Recipe(),
        Protocol(),
        "Sine regression (MAML's toy problem): amplitude in [0.1, 5], phase in [0, pi], x in "
        "[-5, 5]; 10-shot, 32 SGD steps at evaluation. Needs no data. Run: python absl_main.py",
    ),
    _paper(
        "omniglot_5w1s", "omniglot_5w", _OMNIGLOT_5W, 1, 5,
        "Omniglot 5-way 1-shot. Paper: 95.39 +- 0.09 (transductive 97.68 +- 0.04).",
    ),
    _paper(
        "omniglot_5w5s", "omniglot_5w", _OMNIGLOT_5W, 5, 5,
        "Omniglot 5-way 5-shot. Paper: 98.90 +- 0.10 (transductive 99.48 +- 0.06).",
    ),
    _paper(
        "omniglot_20w1s", "omniglot_20w", _OMNIGLOT_20W, 1, 10,
        "Omniglot 20-way 1-shot. Paper: 88.14 +- 0.15 (transductive 89.43 +- 0.14).",
    ),
    _paper(
        "omniglot_20w5s", "omniglot_20w", _OMNIGLOT_20W, 5, 10,
        "Omniglot 20-way 5-shot. Paper: 96.65 +- 0.33 (transductive 97.12 +- 0.32).",
    ),
    _paper(
        "miniimagenet_5w1s", "miniimagenet_5w", _MINIIMAGENET_5W, 1, 5,
        "Mini-ImageNet 5-way 1-shot. Paper: 47.07 +- 0.26 (transductive 49.97 +- 0.32).",
    ),
    _paper(
        "miniimagenet_5w5s", "miniimagenet_5w", _MINIIMAGENET_5W, 5, 15,
        "Mini-ImageNet 5-way 5-shot. Paper: 62.74 +- 0.37 (transductive 65.99 +- 0.58).",
    ),
    Preset(
        "own_images", "own_images", _OWN_IMAGES,
        _PAPER_EVAL.replace(shots=1, eval_batch=5, learning_rate=_OWN_IMAGES.learning_rate),
        "Your own images: Mini-ImageNet's 5-way recipe and 1-shot protocol on a folder of class "
        "folders (--dataset=folder) or a tensorflow-datasets dataset (--dataset=tfds:NAME) in "
        "--data_dir, 84x84 RGB, a fifth of the classes held out. "
        "Run: python absl_main.py --dataset=folder --data_dir=DIR",
    ),
)  # fmt: skip
PRESETS: dict[str, Preset] = {p.name: p for p in _ALL}


def get_preset(name: str) -> Preset:
    """The preset called `name`."""
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset. Expected one of {sorted(PRESETS)}. Received: preset={name!r}"
        )
    return PRESETS[name]
