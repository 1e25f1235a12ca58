"""One worker of the two-process multi_worker_mirrored test (run as a module, TF_CONFIG set)."""

import sys

import numpy as np

from keras_reptile.data.tasks import ClassificationTasks
from keras_reptile.run import build_stacked_model
from keras_reptile.training.strategy import make_strategy
from keras_reptile.training.trainer import MetaTrainer
from tests.fakes import fake_class_images
from tests.training.test_trainer import TINY


def main(model_dir: str, out: str) -> None:
    strategy = make_strategy("multi_worker_mirrored")
    tasks = ClassificationTasks(fake_class_images(shape=(28, 28, 1)))
    model = build_stacked_model(TINY, tasks.input_shape)
    trainer = MetaTrainer(TINY, model, strategy, model_dir, train_tasks=tasks)
    trainer.train()
    weights = trainer.state.numpy_weights()
    np.savez(out, *weights, replicas=strategy.num_replicas_in_sync)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
