"""Entry points that TensorFlow's AutoGraph calls as written, without converting them.

Inside a `tf.function` (a custom training step, a `strategy.run`, a SavedModel
signature), AutoGraph rewrites the source of every Python function it meets
that is not TensorFlow's or Keras' own, so that Python `if`/`for` over tensors
become graph control flow. tfmetric's functions have no such control flow
(they are `keras.ops` code that `jax.jit` traces too), and the rewrite is
costly: the first trace of a `TripletLoss` in a user's `tf.function` converted
~80 of its functions, 6-9 s of CPU on a 2-core machine, against 0.3 s traced
as written. `as_written` marks an entry point
(`tf.autograph.experimental.do_not_convert`); the functions it calls are then
traced as written too. Callables of the user (augmentations, scorers) keep
AutoGraph where tfmetric calls them from a converted function (the `tf.data`
map functions that call them are not marked).
"""

try:
    from tensorflow.autograph.experimental import do_not_convert as as_written
except ImportError:  # an import-only stand-in for TensorFlow (the JAX benchmarks on a GPU)

    def as_written(fn):
        """`fn` itself: without TensorFlow, nothing converts anything."""
        return fn
