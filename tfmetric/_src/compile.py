"""Compiling the metrics' and index's kernels with the active Keras backend.

The kernels are written with `keras.ops`, so they run on every backend:
compiled by XLA through `tf.function(jit_compile=True)` under TensorFlow and
`jax.jit` under JAX; other backends (PyTorch) run them eagerly (no
`torch.compile`: its first compilation costs seconds per shape).
"""

import functools

import keras
import numpy as np
from keras import ops


def backend_jit(fn, fused_elementwise=False):
    """`fn` compiled for the active Keras backend (static shapes per call signature).

    `fused_elementwise`: under JAX on CPU, XNNPACK's library fusions are kept to
    single matrix products (`_JAX_CPU_OPTIONS`), so that XLA fuses the
    elementwise steps around them into one loop, as under TensorFlow (for
    kernels dominated by a matrix product and passes over its result).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, reduce_retracing=False, autograph=False)
    if backend == "jax":
        import jax

        options = _jax_cpu_options() if fused_elementwise and jax_on_cpu() else None
        return jax.jit(fn, compiler_options=options) if options else jax.jit(fn)
    return fn


# XNNPACK's (YNNPACK) library fusions of jaxlib's XLA on CPU make each elementwise
# step of a kernel a pass of its own over the (queries, gallery) matrix; kept to
# single matrix products, XLA fuses the steps into one loop as it does under
# TensorFlow (2-core CPU, 20k x 20k: MAP@R family 1.50 -> 1.30 s, `ExactIndex.search`
# 3.6-3.9 -> 2.75-2.9 s; the mAP counting kernels, gathers and scatters, were
# slower with it: 3.5 -> 4.0 s).
_JAX_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def jax_on_cpu():
    """Whether the kernels run under JAX on the CPU (XLA's CPU runtime of jaxlib).

    There, a call's temporaries are allocated anew on every call and XNNPACK's
    library fusions split elementwise steps: the metrics size their chunks and
    `backend_jit` its options for it.
    """
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() == "cpu"


@functools.cache
def _jax_cpu_options():
    """`_JAX_CPU_OPTIONS` where this jaxlib accepts them, else `None` (XLA's defaults)."""
    import jax

    try:  # an experimental option: a jaxlib without it rejects it by name
        jax.jit(lambda x: x + 1, compiler_options=_JAX_CPU_OPTIONS)(np.zeros(1, np.float32))
    except (RuntimeError, TypeError):  # JaxRuntimeError; a jax.jit without `compiler_options`
        return None
    return _JAX_CPU_OPTIONS


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
