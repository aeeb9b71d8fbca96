"""Largest tensor in a traced TensorFlow computation, nested loop bodies included."""

import numpy as np
import tensorflow as tf

# Placeholders of nested graphs mirror tensors measured outside; the axes that
# BroadcastGradientArgs returns are shape metadata, not data.
_SKIPPED = ("Placeholder", "BroadcastGradientArgs")


def _graphs(graph, seen):
    yield graph
    for op in graph.get_operations():
        for attr in ("body", "cond", "then_branch", "else_branch", "f"):
            try:
                name = op.get_attr(attr).name
            except (ValueError, AttributeError):
                continue
            if name in seen:
                continue
            seen.add(name)
            function = graph._get_function(name)  # the only way to reach nested FuncGraphs
            if function is not None and hasattr(function, "graph"):
                yield from _graphs(function.graph, seen)


def largest_tensor_elements(fn, *args):
    """Traces `fn(*args)` and returns the element count of its largest tensor.

    Unknown dimensions raise, so the check cannot pass vacuously.
    """
    concrete = tf.function(fn).get_concrete_function(*args)
    largest = 0
    for graph in _graphs(concrete.graph, set()):
        for op in graph.get_operations():
            for output in op.outputs:
                if output.dtype in (tf.resource, tf.variant) or op.type in _SKIPPED:
                    continue
                shape = output.shape
                if shape.rank is None or any(dim is None for dim in shape):
                    raise AssertionError(f"{op.name} has an unknown shape {shape}")
                largest = max(largest, int(np.prod(shape.as_list(), dtype=np.int64)))
    return largest
