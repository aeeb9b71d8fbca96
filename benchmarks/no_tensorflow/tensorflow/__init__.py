"""Import-only stand-in for TensorFlow, for the JAX benchmarks on a machine without TensorFlow.

    PYTHONPATH=benchmarks/no_tensorflow KERAS_BACKEND=jax python benchmarks/losses_jax.py

tfmetric imports TensorFlow at module level in its tf.data / export modules; under
KERAS_BACKEND=jax the measured code never calls it. Attribute access resolves to
placeholders (so `import tensorflow as tf` and `class M(tf.Module)` work); any *call*
raises, so a benchmark that touched TensorFlow would fail loudly instead of measuring it.
"""


class _Placeholder:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Placeholder(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"TensorFlow stub called: {self._name}(...) - no TensorFlow here")

    def __mro_entries__(self, bases):
        return (object,)

    def __bool__(self):
        raise RuntimeError(f"TensorFlow stub used as a bool: {self._name}")


__version__ = "0.0.0-stub"


def __getattr__(attr):
    if attr.startswith("__"):
        raise AttributeError(attr)
    return _Placeholder(f"tf.{attr}")
