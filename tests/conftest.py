"""Shared test set-up: two logical CPU devices (for mirrored tests) and the Omniglot location."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
OMNIGLOT_DIR = pathlib.Path(
    os.environ.get("KERAS_REPTILE_OMNIGLOT_DIR", REPO_ROOT.parent / "shared" / "data" / "omniglot")
)

needs_omniglot = pytest.mark.skipif(
    not (OMNIGLOT_DIR / "images_background.zip").is_file()
    or not (OMNIGLOT_DIR / "images_evaluation.zip").is_file(),
    reason=f"Omniglot zips not found in {OMNIGLOT_DIR}; set KERAS_REPTILE_OMNIGLOT_DIR.",
)

# oneDNN's multi-threaded reductions may round differently from run to run; tests that compare
# runs bit for bit (resume == uninterrupted) need deterministic kernels.
tf.config.experimental.enable_op_determinism()
tf.random.set_seed(0)

# Must happen before TensorFlow initialises its devices.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


@pytest.fixture
def class_images():
    from tests.fakes import fake_class_images

    return fake_class_images()
