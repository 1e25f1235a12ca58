"""keras-reptile: meta-train, evaluate and export Reptile / FOMAML models.

With no flags: the `sine` preset, end to end (train, evaluate, plot, export to saved_models/sine/).
Example: python absl_main.py --preset=omniglot_5w1s --data_dir=../shared/data/omniglot
then:    python absl_main.py --preset=omniglot_5w5s  (the same run, measured with 5 shots)
Your own images: python absl_main.py --dataset=folder --data_dir=DIR --ways=5 --shots=1
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out

from absl import app, flags, logging  # noqa: E402

from keras_reptile.config import (  # noqa: E402
    DATASETS,
    INNER_ADAM_MODES,
    PROTOCOL_FIELDS,
    STRATEGIES,
    TFDS_PREFIX,
    Protocol,
    Recipe,
)
from keras_reptile.data.sources import DATA_SOURCES  # noqa: E402
from keras_reptile.models import MODELS  # noqa: E402
from keras_reptile.presets import PRESETS, get_preset  # noqa: E402
from keras_reptile.run import MODES  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "preset",
    None,
    sorted(PRESETS),
    "The paper's run to start from. Default: the run already in --model_dir, else sine.",
)
flags.DEFINE_enum(
    "mode", "all", MODES, "train | evaluate | export | all (train, evaluate, export)."
)
flags.DEFINE_string("model_dir", None, "The run folder. Default: runs/<model name>.")
flags.DEFINE_alias("checkpoint", "model_dir")
flags.DEFINE_string(
    "export_dir", None, "SavedModel base folder. Default: saved_models/<model name>."
)
flags.DEFINE_string(
    "data_dir",
    os.environ.get("KERAS_REPTILE_DATA_DIR"),
    "Dataset folder (Omniglot: the two official zips; --dataset=folder: class sub-folders of "
    "images; --dataset=tfds:NAME: tensorflow-datasets' data directory). "
    "Env: KERAS_REPTILE_DATA_DIR. Default for an existing run: where it read its data.",
)
flags.DEFINE_enum("data_source", "local", DATA_SOURCES, "local files or tensorflow-datasets.")
flags.DEFINE_string("tfds_manual_dir", None, "tensorflow-datasets manual_dir (--data_source=tfds).")
flags.DEFINE_enum("strategy", None, STRATEGIES, "tf.distribute strategy. Default: the preset's.")
flags.DEFINE_integer(
    "cpu_devices", None, "Split the CPU into this many logical devices.", lower_bound=1
)
flags.DEFINE_integer(
    "intra_op_threads",
    1,
    "Threads per TensorFlow kernel (0 = TensorFlow's default). One thread per kernel, with "
    "--task_groups networks running side by side, is fastest on small CPUs.",
    lower_bound=0,
)
flags.DEFINE_integer(
    "inter_op_threads", 0, "Kernels run at once (0 = TensorFlow's default).", lower_bound=0
)
flags.DEFINE_string(
    "warm_start_from",
    None,
    "Start an empty --model_dir from this SavedModel (saved_models/<name>[/<version>]): its "
    "initialization, carried Adam statistics and meta-iteration count. Then train on, evaluate "
    "with this preset's protocol or re-export.",
)
flags.DEFINE_string("name", None, "The model's name (card, default folders). Default: preset's.")
flags.DEFINE_string(
    "dataset",
    None,
    f"One of {', '.join(DATASETS)} or {TFDS_PREFIX}<name>: folder is --data_dir's class "
    f"sub-folders of images, {TFDS_PREFIX}<name> a tensorflow-datasets dataset prepared in "
    "--data_dir. Default: the preset's (own_images when this flag names your own data).",
)
flags.DEFINE_enum("model", None, sorted(MODELS), "The network. Default: the preset's.")

# Every Recipe and Protocol field is a flag that overrides the preset (the official code's names;
# --learning_rate sets the inner step size of training and evaluation alike).
_FIELD_FLAGS = {
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    bool: flags.DEFINE_bool,
    str: flags.DEFINE_string,
    tuple: flags.DEFINE_list,
}
_FIELDS = {f.name: f for cls in (Recipe, Protocol) for f in dataclasses.fields(cls)}
_OVERRIDABLE = [name for name in _FIELDS if name not in ("strategy", "dataset", "model")]
_CHOICES = {"inner_adam": INNER_ADAM_MODES}
_HELP = {
    "image_size": "Own data: height and width the images are resized to.",
    "channels": "Own data: 1 (gray) or 3 (RGB).",
    "test_fraction": "Own data: share of the classes held out for meta-testing, drawn by --seed.",
    "test_classes": "Own data: comma-separated meta-test class names (instead of test_fraction).",
    "rotations": "Own data: add 90/180/270 degree rotations of training classes (Omniglot's).",
}
for _name in _OVERRIDABLE:
    _help = _HELP.get(_name, f"Overrides the preset's {_name}.")
    if _name in _CHOICES:
        flags.DEFINE_enum(_name, None, _CHOICES[_name], _help)
    else:
        _FIELD_FLAGS[type(_FIELDS[_name].default)](_name, None, _help)
flags.DEFINE_alias("ways", "classes")


def resolve() -> tuple[Recipe, Protocol, str, str]:
    """The recipe, protocol, model name and run folder the flags describe."""
    from keras_reptile.run import read_run

    stored = read_run(FLAGS.model_dir) if FLAGS.model_dir and not FLAGS.preset else None
    if stored:
        recipe, info = stored
        protocol, name = info.protocol, info.name
    else:
        own = FLAGS.dataset == "folder" or (FLAGS.dataset or "").startswith(TFDS_PREFIX)
        if FLAGS.dataset in ("omniglot", "miniimagenet") and not FLAGS.preset:
            raise ValueError(
                f"The paper's datasets start from their presets: pass --preset "
                f"({', '.join(p for p in sorted(PRESETS) if p.startswith(FLAGS.dataset))}). "
                f"Received: dataset={FLAGS.dataset!r}"
            )
        preset = get_preset(FLAGS.preset or ("own_images" if own else "sine"))
        recipe, protocol, name = preset.recipe, preset.protocol, preset.model_name
        if own or (FLAGS.dataset and FLAGS.dataset != recipe.dataset):
            name = _own_name(FLAGS.dataset, FLAGS.data_dir, FLAGS.classes or recipe.classes)
    name = FLAGS.name or name
    given = {n: FLAGS[n].value for n in _OVERRIDABLE if FLAGS[n].present}
    if FLAGS["test_classes"].present and FLAGS["test_fraction"].present:
        raise ValueError(
            "--test_classes lists the meta-test classes and --test_fraction draws them: pass "
            f"one. Received: test_classes={FLAGS.test_classes}, "
            f"test_fraction={FLAGS.test_fraction}"
        )
    for key in ("strategy", "dataset", "model"):
        if FLAGS[key].value:
            given[key] = FLAGS[key].value
    if given.get("train_shots") == 0:  # the official code's meaning: as many as --shots
        given["train_shots"] = given.get("shots", protocol.shots)
    recipe = recipe.replace(
        **{k: v for k, v in given.items() if k not in PROTOCOL_FIELDS or k == "learning_rate"}
    )
    protocol = protocol.replace(**{k: v for k, v in given.items() if k in PROTOCOL_FIELDS})
    return recipe, protocol, name, FLAGS.model_dir or os.path.join("runs", name)


def _own_name(dataset: str, data_dir: str | None, ways: int) -> str:
    """A model name for a dataset the flags chose: the folder's or tfds dataset's name."""
    if dataset.startswith(TFDS_PREFIX):
        base = dataset[len(TFDS_PREFIX) :]
    else:
        base = os.path.basename(os.path.normpath(data_dir)) if data_dir else dataset
    base = "".join(c if c.isalnum() or c in "-_." else "_" for c in base).strip("._") or dataset
    return f"{base}_{ways}w"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(
            f"Unexpected arguments: {' '.join(argv[1:])}. Flags take the form --name=value."
        )
    logging.set_verbosity(logging.WARNING)
    from keras_reptile.training.strategy import set_threads, use_cpu_devices

    set_threads(FLAGS.intra_op_threads, FLAGS.inter_op_threads)
    if FLAGS.cpu_devices:
        use_cpu_devices(FLAGS.cpu_devices)
    from keras_reptile.run import run

    try:
        recipe, protocol, name, model_dir = resolve()
        run(
            recipe.validate(),
            protocol.validate(recipe),
            name=name,
            mode=FLAGS.mode,
            model_dir=model_dir,
            export_dir=FLAGS.export_dir or os.path.join("saved_models", name),
            data_dir=FLAGS.data_dir,
            data_source=FLAGS.data_source,
            tfds_manual_dir=FLAGS.tfds_manual_dir,
            warm_start_from=FLAGS.warm_start_from,
        )
    except ValueError as error:
        # Bad values surface here as the library's ValueError: show the message, not a traceback.
        print(
            f"Error: {error}\nPass --helpshort or --helpfull to see help on flags.", file=sys.stderr
        )
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
