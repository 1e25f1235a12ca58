"""keras-reptile: Reptile and first-order MAML in TensorFlow 2 / Keras 3."""

import os

# TensorFlow turns its oneDNN CPU kernels on by itself only on CPUs with AVX-512; on others they
# are still the faster ones for this package's small convolutions (docs/benchmarks.md). Read when
# TensorFlow is first imported; a value already in the environment wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.3.0"
