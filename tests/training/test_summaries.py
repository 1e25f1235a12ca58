import glob
import os

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from keras_reptile.training.summaries import ScalarWriter


def read_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard folder, as the classic reader sees it."""
    assert glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
    acc = EventAccumulator(str(logdir))  # every event file of the folder, in order
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_are_read_by_event_accumulator(tmp_path):
    writer = ScalarWriter(str(tmp_path / "train"))
    writer.write(10, {"loss": 0.5, "eval/test/accuracy": 0.25})
    writer.write(20, {"loss": 0.25})
    scalars = read_scalars(tmp_path / "train")
    assert scalars["loss"] == [(10, 0.5), (20, 0.25)]
    assert scalars["eval/test/accuracy"] == [(10, 0.25)]
