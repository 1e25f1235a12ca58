"""keras-reptile: meta-train, evaluate and export Reptile / FOMAML models.

With no flags: the `sine` preset, end to end (train, evaluate, plot, export to saved_models/sine/).
Example: python absl_main.py --preset=omniglot_5w1s --data_dir=../shared/data/omniglot
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out

from absl import app, flags, logging  # noqa: E402

from keras_reptile.config import STRATEGIES, Config  # noqa: E402
from keras_reptile.data.sources import DATA_SOURCES  # noqa: E402
from keras_reptile.presets import PRESETS, get_preset  # noqa: E402
from keras_reptile.run import MODES  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "sine", sorted(PRESETS), "The paper's run to start from.")
flags.DEFINE_enum(
    "mode", "all", MODES, "train | evaluate | export | all (train, evaluate, export)."
)
flags.DEFINE_string("model_dir", None, "Checkpoints and summaries. Default: runs/<preset>.")
flags.DEFINE_alias("checkpoint", "model_dir")
flags.DEFINE_string("export_dir", None, "SavedModel base folder. Default: saved_models/<preset>.")
flags.DEFINE_string(
    "data_dir",
    os.environ.get("KERAS_REPTILE_DATA_DIR"),
    "Dataset folder (Omniglot: the two official zips). Env: KERAS_REPTILE_DATA_DIR.",
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
flags.DEFINE_string("name", None, "Model name in the export's card. Default: the preset.")

# Every Config field is a flag that overrides the preset (names follow the official code's).
_FIELD_FLAGS = {
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    bool: flags.DEFINE_bool,
    str: flags.DEFINE_string,
}
_OVERRIDABLE = [
    f for f in dataclasses.fields(Config) if f.name not in ("strategy", "dataset", "model")
]
for _field in _OVERRIDABLE:
    _FIELD_FLAGS[type(_field.default)](_field.name, None, f"Overrides the preset's {_field.name}.")


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
    overrides = {f.name: FLAGS[f.name].value for f in _OVERRIDABLE if FLAGS[f.name].present}
    if FLAGS.strategy:
        overrides["strategy"] = FLAGS.strategy
    from keras_reptile.run import run

    try:
        config = get_preset(FLAGS.preset).replace(**overrides).validate()
        run(
            config,
            mode=FLAGS.mode,
            model_dir=FLAGS.model_dir or os.path.join("runs", FLAGS.preset),
            export_dir=FLAGS.export_dir or os.path.join("saved_models", FLAGS.preset),
            data_dir=FLAGS.data_dir,
            data_source=FLAGS.data_source,
            tfds_manual_dir=FLAGS.tfds_manual_dir,
            name=FLAGS.name or FLAGS.preset,
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
