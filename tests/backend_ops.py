"""Gradients with whatever backend Keras runs on, for tests that hold under every backend.

`value_and_grad(fn, x)` is `tf.GradientTape` under TensorFlow, `jax.value_and_grad`
under JAX and `torch.autograd.grad` under PyTorch: the library code runs as a user's
training step would run it, and the test asserts the same numbers under every backend.
"""

import keras
import numpy as np


def backend():
    return keras.backend.backend()


def value_and_grad(fn, *args, argnums=0, unconnected="raise"):
    """`(fn(*args), d fn / d args[argnums])` as numpy arrays, with the active backend.

    Args:
        fn: A function of backend tensors returning a scalar tensor.
        *args: numpy arrays (or backend tensors, or lists of them); their dtype is kept
            (float16 stays float16).
        argnums: Index, or tuple of indices, of the arguments to differentiate.
        unconnected: `"raise"` (an argument the value does not depend on is an error
            under TensorFlow) or `"zero"` (its gradient is zeros, as JAX gives).

    Returns:
        `(value, gradient)`, or `(value, (gradients...))` when `argnums` is a tuple;
        the gradient has the argument's dtype.
    """
    value, grads = gradient_function(fn, argnums, unconnected)(*args)
    if isinstance(argnums, tuple):
        return _numpy(value), tuple(_numpy_tree(g) for g in grads)
    return _numpy(value), _numpy_tree(grads)


def gradient_function(fn, argnums=0, unconnected="raise"):
    """A traceable `args -> (fn(*args), gradients)` (can be wrapped in `jit`)."""
    several = isinstance(argnums, tuple)
    indices = argnums if several else (argnums,)
    if backend() == "jax":
        import jax

        def jax_step(*args):
            args = jax.tree_util.tree_map(keras.ops.convert_to_tensor, args)
            value, grads = jax.value_and_grad(fn, argnums=indices)(*args)
            return value, (grads if several else grads[0])

        return jax_step
    if backend() == "tensorflow":
        import tensorflow as tf

        def tf_step(*args):
            args = tf.nest.map_structure(tf.convert_to_tensor, args)
            with tf.GradientTape() as tape:
                for i in indices:
                    tape.watch(tf.nest.flatten(args[i]))
                value = fn(*args)
            grads = tape.gradient(
                value,
                [args[i] for i in indices],
                unconnected_gradients="zero" if unconnected == "zero" else "none",
            )
            if any(g is None for g in tf.nest.flatten(grads)):
                raise AssertionError("The value does not depend on a differentiated argument.")
            return value, (tuple(grads) if several else grads[0])

        return tf_step
    if backend() == "torch":
        import torch

        def torch_step(*args):
            args = list(args)
            for i in indices:
                args[i] = _torch_leaves(args[i])
            value = fn(*args)
            leaves = [leaf for i in indices for leaf in _flatten(args[i])]
            flat = torch.autograd.grad(value, leaves, allow_unused=True)
            if any(g is None for g in flat) and unconnected != "zero":
                raise AssertionError("The value does not depend on a differentiated argument.")
            flat = iter(
                torch.zeros_like(leaf) if g is None else g
                for g, leaf in zip(flat, leaves, strict=True)
            )
            grads = tuple(_unflatten(args[i], flat) for i in indices)
            return value, (grads if several else grads[0])

        return torch_step
    raise NotImplementedError(f"No gradient helper for the {backend()!r} backend.")


def value_and_grad_with_variables(fn, x, variables):
    """`(fn(x), (d/dx, [d/dv for v in variables]))`: Keras variables as differentiable inputs.

    `fn` calls layers that read `variables`; their values are bound through a
    `keras.StatelessScope`, which works under every backend.
    """
    variables = list(variables)

    def bound(x, values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
            return fn(x)

    return value_and_grad(bound, x, [v.value for v in variables], argnums=(0, 1))


def jit(fn):
    """`fn` compiled with XLA by the active backend (`tf.function(jit_compile=True)`, `jax.jit`).

    Under PyTorch `fn` runs eagerly, as `tfmetric/_src/compile.py` runs the kernels.
    """
    if backend() == "jax":
        import jax

        return jax.jit(fn)
    if backend() == "torch":
        return fn
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)


def grad(fn, *args, argnums=0):
    """`d fn / d args[argnums]` as numpy (see `value_and_grad`)."""
    return value_and_grad(fn, *args, argnums=argnums)[1]


def _torch_leaves(x):
    """Fresh leaf tensors requiring gradients, with the structure (list/tuple) of `x`."""
    if isinstance(x, (list, tuple)):
        return [_torch_leaves(v) for v in x]
    x = keras.ops.convert_to_tensor(x)
    return x.detach().clone().requires_grad_(True)


def _flatten(x):
    if isinstance(x, (list, tuple)):
        return [leaf for v in x for leaf in _flatten(v)]
    return [x]


def _unflatten(structure, flat):
    if isinstance(structure, (list, tuple)):
        return [_unflatten(v, flat) for v in structure]
    return next(flat)


def _numpy_tree(x):
    if isinstance(x, (list, tuple)):
        return [_numpy(v) for v in x]
    return _numpy(x)


def _numpy(x):
    x = keras.ops.convert_to_numpy(x)
    return np.asarray(x)


def numpy_dtype(name):
    """The numpy dtype of `name` (`"bfloat16"` is ml_dtypes', as both backends use)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
