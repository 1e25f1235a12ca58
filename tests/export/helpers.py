"""What the SavedModel checks share."""

from tensorflow.python.saved_model import loader_impl

# Ops TensorFlow Serving's C++ server cannot run.
PYTHON_OPS = {"PyFunc", "EagerPyFunc", "PyFuncStateless"}


def saved_model_ops(path) -> set[str]:
    """Every op type in a SavedModel's graph and its function library."""
    graph = loader_impl.parse_saved_model(str(path)).meta_graphs[0].graph_def
    ops = {n.op for n in graph.node}
    for fn in graph.library.function:
        ops |= {n.op for n in fn.node_def}
    return ops
