"""The paper's runs as named configs: data, kept apart from the code that runs them.

Each classification preset is the paper's command (DESIGN section 4); every field can be overridden
by the flag of the same name.
"""

from __future__ import annotations

from keras_reptile.config import Config

# Shared by every classification run of the paper: meta_step 1 -> 0, meta_batch 5,
# eval_iters 50, 10,000 evaluation tasks, Adam with beta1=0 in the inner loop.
_PAPER = Config(
    meta_step=1.0,
    meta_step_final=0.0,
    meta_batch=5,
    eval_iters=50,
    eval_samples=10000,
    sgd=False,
    eval_interval=1000,
    eval_interval_samples=100,
    meta_iters=100000,
)
_OMNIGLOT = _PAPER.replace(dataset="omniglot", model="omniglot_cnn", train_shots=10)
_OMNIGLOT_5W = _OMNIGLOT.replace(
    classes=5, inner_batch=10, inner_iters=5, learning_rate=0.001, eval_batch=5
)
_OMNIGLOT_20W = _OMNIGLOT.replace(
    classes=20,
    inner_batch=20,
    inner_iters=10,
    learning_rate=0.0005,
    meta_iters=200000,
    eval_batch=10,
)
_MINIIMAGENET = _PAPER.replace(
    dataset="miniimagenet",
    model="miniimagenet_cnn",
    classes=5,
    train_shots=15,
    inner_batch=10,
    inner_iters=8,
    learning_rate=0.001,
)

PRESETS: dict[str, dict] = {
    "sine": dict(
        description=(
            "Sine regression (MAML's toy problem): amplitude in [0.1, 5], phase in [0, pi], "
            "x in [-5, 5]; 10-shot, 32 SGD steps at evaluation. Needs no data. "
            "Run: python absl_main.py"
        ),
        config=Config(),
    ),
    "omniglot_5w1s": dict(
        description="Omniglot 5-way 1-shot. Paper: 95.39 +- 0.09 (transductive 97.68 +- 0.04).",
        config=_OMNIGLOT_5W.replace(shots=1),
    ),
    "omniglot_5w5s": dict(
        description="Omniglot 5-way 5-shot. Paper: 98.90 +- 0.10 (transductive 99.48 +- 0.06).",
        config=_OMNIGLOT_5W.replace(shots=5),
    ),
    "omniglot_20w1s": dict(
        description="Omniglot 20-way 1-shot. Paper: 88.14 +- 0.15 (transductive 89.43 +- 0.14).",
        config=_OMNIGLOT_20W.replace(shots=1),
    ),
    "omniglot_20w5s": dict(
        description="Omniglot 20-way 5-shot. Paper: 96.65 +- 0.33 (transductive 97.12 +- 0.32).",
        config=_OMNIGLOT_20W.replace(shots=5),
    ),
    "miniimagenet_5w1s": dict(
        description="Mini-ImageNet 5-way 1-shot. Paper: 47.07 +- 0.26 (transd. 49.97 +- 0.32).",
        config=_MINIIMAGENET.replace(shots=1, eval_batch=5),
    ),
    "miniimagenet_5w5s": dict(
        description="Mini-ImageNet 5-way 5-shot. Paper: 62.74 +- 0.37 (transd. 65.99 +- 0.58).",
        config=_MINIIMAGENET.replace(shots=5, eval_batch=15),
    ),
}


def get_preset(name: str) -> Config:
    """Returns the config of a named preset."""
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset. Expected one of {sorted(PRESETS)}. Received: preset={name!r}"
        )
    return PRESETS[name]["config"]
