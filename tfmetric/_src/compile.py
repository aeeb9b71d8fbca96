"""Compiling the metrics' and index's kernels with the active Keras backend.

The kernels are written with `keras.ops`, so they run on every backend:
compiled by XLA through `tf.function(jit_compile=True)` under TensorFlow and
`jax.jit` under JAX; other backends (PyTorch) run them eagerly (no
`torch.compile`: its first compilation costs seconds per shape).
"""

import keras
import numpy as np
from keras import ops


def backend_jit(fn):
    """`fn` compiled for the active Keras backend (static shapes per call signature)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, reduce_retracing=False, autograph=False)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return fn


def tensor(array):
    """A backend tensor of a numpy array."""
    return ops.convert_to_tensor(np.asarray(array))


def numpy(value):
    """A numpy array of a backend tensor."""
    if keras.backend.backend() == "torch":
        import torch

        # Directly: numpy 2 warns (DeprecationWarning) on `np.array` of a torch tensor.
        if isinstance(value, torch.Tensor) and value.dtype != torch.bfloat16:
            return value.detach().cpu().numpy()
    return np.asarray(ops.convert_to_numpy(value))
