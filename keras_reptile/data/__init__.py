"""Task sources: the paper's datasets (`omniglot`, `miniimagenet`, sine) and your own data.

Your own data, as the `EpisodicSplits` the built-in readers return (wrap each split in
`tasks.ClassificationTasks` for the trainer and the evaluator):

- `image_folder(path, ...)`: a folder of class sub-folders of images;
- `arrays(images, labels, ...)`: in-memory uint8 images and their labels;
- `tfds_dataset(name, data_dir=...)`: a tensorflow-datasets image classification dataset prepared
  in a local `data_dir`.
"""

from keras_reptile.data.array_source import arrays
from keras_reptile.data.base import ClassImages, EpisodicSplits
from keras_reptile.data.folder_source import image_folder
from keras_reptile.data.tfds_images import tfds_dataset

__all__ = ["ClassImages", "EpisodicSplits", "arrays", "image_folder", "tfds_dataset"]
